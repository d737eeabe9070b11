"""``ibc-embed`` / ``python tools/embed.py``: the embeddings of a checkpoint, in one ``.npz``.

    python tools/embed.py --cfg RUN/config.yaml (--ckpt CKPT | --init) (--split SPLIT | --images DIR_OR_TXT)
                          [--labels-from-folders] [--chunk-size N] [--refine dba|mpn] --out E.npz [--overwrite]
                          [KEY VALUE ...]

``--refine dba|mpn`` writes the embeddings refined at test time as evaluation refines them
(:mod:`ibc_geo.evaluation.refine`; group size and neighbours from the ``eval.refine_*`` keys, e.g.
``eval.refine_k 8``): every item grouped with its nearest other items, the file's ``refinement``
member records the parameters, and ``unrefined_embeddings`` (``mpn``: also ``features``) let
``tools/search.py --refine`` refine a new query the same way. Memory is ``O(N x D)`` then (all
rows at once), not one chunk. ``--refine aqe`` is refused: it expands queries only
(``tools/search.py --refine aqe``).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ibc_geo.cli.common import (add_config_arguments, add_model_arguments, config_from_args,
                                require_model_arguments, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/embed.py",
        description="Embed a dataset split, or any folder or list of images, with a run's checkpoint (the "
                    "backbone embedding, L2-normalised, with evaluation's preprocessing) into one .npz: "
                    "embeddings [N, D] float32, paths, labels when known, the config's and model's hashes. "
                    "Written by chunks, so memory stays bounded for any number of images.")
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", choices=["train", "val", "test"], help="a split of the config's dataset")
    source.add_argument("--images", metavar="DIR_OR_TXT",
                        help="a folder (every image below it), a .txt list of image paths (relative to the "
                             "list's folder) or one image file")
    parser.add_argument("--labels-from-folders", action="store_true",
                        help="with --images: each image's class is the name of its parent folder")
    parser.add_argument("--out", metavar="E.npz", help="the embeddings file to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (never an input of this command, nor a run's own files)")
    parser.add_argument("--chunk-size", type=int, default=16384, metavar="N",
                        help="embeddings held in memory between writes (default 16384)")
    parser.add_argument("--refine", choices=["dba", "aqe", "mpn"],
                        help="write embeddings refined at test time from each item's nearest others: dba (mean of "
                             "the group) or mpn (the run's MPN on the group); eval.refine_k etc. set the group. "
                             "Holds all N embeddings in memory. aqe is query-side: tools/search.py --refine aqe")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if not args.print_config:
        require_model_arguments(parser, args)
        if not (args.split or args.images):
            parser.error("one of the arguments --split --images is required")
        if not args.out:
            parser.error("--out E.npz is required")
        if args.labels_from_folders and not args.images:
            parser.error("--labels-from-folders goes with --images (a split has its own labels)")
        if args.chunk_size < 1:
            parser.error("--chunk-size must be positive")
    cfg = config_from_args(args)
    refinement = _refinement(args)

    from ibc_geo.retrieval.embed import check_refinement, embed_image_files, embed_split, load_embedder
    from ibc_geo.retrieval.gallery import describe_refinement
    from ibc_geo.retrieval.images import list_images

    from ibc_geo.utils.io import check_output

    paths = list_images(args.images) if args.images else None  # a bad folder fails before the model loads
    # the output, before any work: not an input, not a run's file, not an existing file without
    # --overwrite, a writable folder with room for the embeddings (twice: memory map and zip)
    size = 2 * 4 * len(paths) * int(cfg.model.embedding_dim) if paths is not None else 0
    if args.refine:  # the refined rows, the unrefined ones (and mpn: the features)
        size *= 2 if args.refine == "dba" else 3
    check_output(args.out, overwrite=args.overwrite, size=size,
                 inputs=[args.cfg, args.ckpt, args.images, *(paths or [])])  # images: by name
    embedder = load_embedder(cfg, args.ckpt, split=args.split or "test")
    if refinement is not None:
        refinement = refinement(cfg)
        check_refinement(embedder, refinement)  # mpn without an MPN: before any image is embedded
    if paths is not None:
        summary = embed_image_files(embedder, paths, args.out, f"images:{os.path.abspath(args.images)}",
                                    labels_from_folder_names=args.labels_from_folders, chunk_size=args.chunk_size,
                                    overwrite=args.overwrite, refinement=refinement)
    else:
        summary = embed_split(embedder, args.split, args.out, chunk_size=args.chunk_size, overwrite=args.overwrite,
                              refinement=refinement)
    classes = f", {summary['num_classes']} classes" if summary["num_classes"] is not None else ""
    refined = f", refined by {describe_refinement(refinement.params())}" if refinement is not None else ""
    print(f"wrote {summary['path']}: {summary['num_items']} embeddings of {summary['dim']} dimensions{classes} "
          f"from {summary['source']}{refined} ({summary['seconds']:.1f} s, model {embedder.model_hash})")


def _refinement(args):
    """``None`` without ``--refine``; else a function of the config giving the
    :class:`~ibc_geo.evaluation.refine.Refinement` (``--refine`` the method, ``eval.refine_*`` the rest).
    ``--refine aqe`` and an ``eval.refine`` override that contradicts ``--refine`` are refused here."""
    if not args.refine:
        return None
    from ibc_geo.retrieval.errors import RetrievalError

    if args.refine == "aqe":
        raise RetrievalError("--refine aqe is query-side (it expands the queries, the gallery stays as it is): "
                             "embed without --refine and search with tools/search.py --refine aqe")
    pairs = dict(zip(args.overrides[0::2], args.overrides[1::2]))
    if pairs.get("eval.refine", args.refine) != args.refine:
        raise RetrievalError(f"--refine {args.refine} and the override eval.refine {pairs['eval.refine']} contradict "
                             f"each other: give one")

    def build(cfg):
        from dataclasses import replace

        from ibc_geo.evaluation.refine import Refinement

        return replace(Refinement.from_config(cfg), method=args.refine)
    return build


def console() -> int:
    return run(main)

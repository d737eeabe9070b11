"""``ibc-embed`` / ``python tools/embed.py``: the embeddings of a checkpoint, in one ``.npz``.

    python tools/embed.py --cfg RUN/config.yaml (--ckpt CKPT | --init) (--split SPLIT | --images DIR_OR_TXT)
                          [--labels-from-folders] [--chunk-size N] --out E.npz [--overwrite] [KEY VALUE ...]
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

    from ibc_geo.retrieval.embed import embed_image_files, embed_split, load_embedder
    from ibc_geo.retrieval.images import list_images

    from ibc_geo.utils.io import check_output

    paths = list_images(args.images) if args.images else None  # a bad folder fails before the model loads
    # the output, before any work: not an input, not a run's file, not an existing file without
    # --overwrite, a writable folder with room for the embeddings (twice: memory map and zip)
    size = 2 * 4 * len(paths) * int(cfg.model.embedding_dim) if paths is not None else 0
    check_output(args.out, overwrite=args.overwrite, size=size,
                 inputs=[args.cfg, args.ckpt, args.images, *(paths or [])])  # images: by name
    embedder = load_embedder(cfg, args.ckpt, split=args.split or "test")
    if paths is not None:
        summary = embed_image_files(embedder, paths, args.out, f"images:{os.path.abspath(args.images)}",
                                    labels_from_folder_names=args.labels_from_folders, chunk_size=args.chunk_size,
                                    overwrite=args.overwrite)
    else:
        summary = embed_split(embedder, args.split, args.out, chunk_size=args.chunk_size, overwrite=args.overwrite)
    classes = f", {summary['num_classes']} classes" if summary["num_classes"] is not None else ""
    print(f"wrote {summary['path']}: {summary['num_items']} embeddings of {summary['dim']} dimensions{classes} "
          f"from {summary['source']} ({summary['seconds']:.1f} s, model {embedder.model_hash})")


def console() -> int:
    return run(main)

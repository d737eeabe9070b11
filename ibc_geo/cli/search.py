"""``ibc-search`` / ``python tools/search.py``: the nearest gallery items of query images or of gallery members.

    python tools/search.py --gallery E.npz (--query IMG [IMG ...] --cfg RUN/config.yaml --ckpt CKPT | --query-ids I [I ...])
                           --k K [--index FACTORY] [--params P] [--save-index F | --load-index F]
                           [--grid G.png] [--thumb PX] [--out R.json] [--overwrite] [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/search.py",
        description="Search an embedded gallery (tools/embed.py) with query images or with gallery members (never "
                    "retrieving themselves): exact cosine search by default, or a faiss index. Prints the top-k "
                    "paths and cosine similarities; optionally JSON (--out) and a picture (--grid).",
        epilog="Put KEY VALUE config overrides before --query (its list of images takes every word after it).")
    queries = parser.add_mutually_exclusive_group()
    queries.add_argument("--query", nargs="+", metavar="IMG", help="query image files (need --cfg and --ckpt or --init)")
    queries.add_argument("--query-ids", nargs="+", type=int, metavar="I",
                         help="gallery indices as queries (0-based rows of the gallery file)")
    parser.add_argument("--gallery", metavar="E.npz", help="embeddings file written by tools/embed.py")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--ckpt", metavar="CKPT", help="the checkpoint that embedded the gallery (for --query)")
    model.add_argument("--init", action="store_true", help="the initialised model embedded the gallery (for --query)")
    parser.add_argument("--k", type=int, default=10, metavar="K", help="neighbours per query (default 10)")
    parser.add_argument("--index", metavar="FACTORY",
                        help="faiss index-factory string, trained on the gallery, e.g. IVF4096,Flat or HNSW32 "
                             "(default: exact search)")
    parser.add_argument("--params", default="", metavar="P",
                        help="faiss search parameters, e.g. nprobe=64 or efSearch=128 (default nprobe=16, efSearch=64)")
    parser.add_argument("--train-size", type=int, default=0, metavar="N",
                        help="train --index on N random gallery vectors (default: faiss's sample, up to 256 per IVF list)")
    saved = parser.add_mutually_exclusive_group()
    saved.add_argument("--save-index", metavar="F", help="write the index (and F.json, its gallery's record)")
    saved.add_argument("--load-index", metavar="F", help="read an index saved by --save-index for this gallery")
    parser.add_argument("--labels-from-folders", action="store_true",
                        help="with --query: a query's class is its parent folder's name (green / red in --grid)")
    parser.add_argument("--grid", metavar="G.png", help="draw each query with its top-k thumbnails")
    parser.add_argument("--thumb", type=int, default=96, metavar="PX", help="thumbnail side in --grid (default 96)")
    parser.add_argument("--out", metavar="R.json", help="write the results as JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --out, --grid and --save-index files (never an input of this "
                             "command, nor a training run's own files)")
    add_config_arguments(parser)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args) -> None:
    if not args.gallery:
        parser.error("--gallery E.npz is required")
    if not (args.query or args.query_ids):
        parser.error("one of the arguments --query --query-ids is required")
    if args.query and not (args.cfg and (args.ckpt or args.init)):
        parser.error("--query needs the model that embedded the gallery: --cfg RUN/config.yaml and --ckpt CKPT (or --init)")
    if args.labels_from_folders and not args.query:
        parser.error("--labels-from-folders goes with --query (gallery members have their labels)")
    if args.load_index and args.index:
        parser.error("--index and --load-index exclude each other (a loaded index keeps the factory it was built with)")
    if args.k < 1:
        parser.error("--k must be positive")
    if args.train_size < 0:
        parser.error("--train-size must be >= 0")
    if args.thumb < 1:
        parser.error("--thumb must be positive")


def gallery_image_paths(gallery: Optional[str]) -> list:
    """The image paths a gallery stores (what ``--grid`` draws from), or none when it cannot be read
    here (loading it later says why)."""
    import numpy as np

    if not gallery or not os.path.isfile(gallery):
        return []
    try:
        with np.load(gallery, allow_pickle=False) as data:
            return [str(p) for p in data["paths"]] if "paths" in data.files else []
    except Exception:  # noqa: BLE001 - any unreadable gallery is reported by the real load
        return []


def check_outputs(args) -> None:
    """Every file this command would write, checked before any work: never one of its inputs (the
    gallery, a loaded index, the queries, the config, the checkpoint), nor a run's own file, nor an
    existing file without ``--overwrite``, nor one in a folder that cannot be written."""
    from ibc_geo.utils.io import check_distinct, check_output

    inputs = [args.gallery, args.load_index, args.load_index and args.load_index + ".json", args.cfg, args.ckpt,
              *(args.query or []), *gallery_image_paths(args.gallery)]
    outputs = [args.out, args.grid, args.save_index, args.save_index and args.save_index + ".json"]
    check_distinct(outputs)
    for out in outputs:
        if out:
            check_output(out, overwrite=args.overwrite, inputs=inputs)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.print_config:
        config_from_args(args)
    _check_arguments(parser, args)
    check_outputs(args)
    cfg = config_from_args(args) if args.query else None

    import numpy as np

    from ibc_geo.retrieval.errors import GalleryError, RetrievalError
    from ibc_geo.retrieval.gallery import load_gallery
    from ibc_geo.retrieval.images import check_image_files, folder_names
    from ibc_geo.retrieval.search import SearchIndex

    gallery = load_gallery(args.gallery)
    changed = gallery.unit_norm()  # printed similarities are cosines whatever the file holds
    if changed:
        import logging

        logging.getLogger("ibc_geo").warning(
            "gallery %s: %d of %d embeddings are not L2-normalised; they are normalised here, so that the "
            "similarities are cosines (tools/embed.py writes normalised embeddings)", args.gallery, changed,
            len(gallery))
    n = len(gallery)
    if args.query:
        check_image_files(args.query, "query image")
        if int(cfg.model.embedding_dim) != gallery.dim:
            raise GalleryError(f"gallery {args.gallery} holds {gallery.dim}-d embeddings, but the model of {args.cfg} "
                               f"makes {cfg.model.embedding_dim}-d ones: expected a gallery embedded by this model "
                               f"(tools/embed.py --cfg {args.cfg} ...)")
    available = n - (1 if args.query_ids else 0)
    if args.k > available:
        raise RetrievalError(f"--k {args.k} exceeds the {available} items of gallery {args.gallery} each query can "
                             f"retrieve" + (" (itself excluded)" if args.query_ids else ""))
    query_labels = None  # class names (str) or labels (int) of the queries, for correctness
    if args.query_ids:
        ids = np.asarray(args.query_ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise RetrievalError(f"query id {int(bad[0])} is not a row of gallery {args.gallery} (expected 0..{n - 1})")
        vectors, exclude = gallery.embeddings[ids], ids
        query_paths = [str(gallery.paths[i]) for i in ids]
        if gallery.labels is not None:
            query_labels = [gallery.label_name(int(gallery.labels[i])) for i in ids]
    else:
        from ibc_geo.retrieval.embed import embed_images, load_embedder

        embedder = load_embedder(cfg, args.ckpt)
        stored = gallery.meta.get("model_hash")
        if stored and stored != embedder.model_hash:
            raise GalleryError(f"gallery {args.gallery} was embedded by another model (model hash {stored}, "
                               f"checkpoint {gallery.meta.get('checkpoint') or 'none (--init)'}) than "
                               f"{args.ckpt or '--init'} ({embedder.model_hash}): expected the same model for "
                               f"queries and gallery")
        vectors, exclude, query_paths = embed_images(embedder, args.query), None, list(args.query)
        if args.labels_from_folders and gallery.labels is not None:
            query_labels = folder_names(args.query)

    if args.load_index:
        index = SearchIndex.load(args.load_index, gallery.embeddings, gallery.fingerprint, args.gallery, args.params)
    elif args.index or args.save_index:
        index = SearchIndex.build(gallery.embeddings, args.index or "Flat", args.params, gallery.fingerprint,
                                  source=f"gallery {args.gallery}", train_size=args.train_size)
    else:
        index = SearchIndex(gallery.embeddings, fingerprint=gallery.fingerprint)
    sims, nbrs = index.search(vectors, args.k, exclude=exclude)

    results = []
    for qi, path in enumerate(query_paths):
        neighbours = []
        for rank, (j, s) in enumerate(zip(nbrs[qi], sims[qi]), start=1):
            j = int(j)
            entry = {"rank": rank, "id": j if j >= 0 else None, "path": str(gallery.paths[j]) if j >= 0 else None,
                     "similarity": float(s) if j >= 0 else None}
            if gallery.labels is not None and j >= 0:
                entry["label"] = gallery.label_name(int(gallery.labels[j]))
                if query_labels is not None:
                    entry["correct"] = bool(entry["label"] == query_labels[qi])
            neighbours.append(entry)
        results.append({"query": path, "id": int(exclude[qi]) if exclude is not None else None,
                        "label": None if query_labels is None else query_labels[qi], "neighbours": neighbours})

    picture = None
    if args.grid:
        from ibc_geo.retrieval.grid import draw_retrieval_grid
        from ibc_geo.retrieval.images import GalleryImages, read_image

        images = GalleryImages(gallery)
        q_images = [images[int(i)] for i in exclude] if exclude is not None else [read_image(p) for p in query_paths]
        n_images = [[images[int(j)] if j >= 0 else None for j in row] for row in nbrs]
        correct = None
        if query_labels is not None and gallery.labels is not None:
            correct = np.array([[bool(nb.get("correct", False)) for nb in r["neighbours"]] for r in results])
        picture = draw_retrieval_grid(q_images, n_images, correct, thumb=args.thumb)

    for r in results:
        label = "" if r["label"] is None else f"  [{r['label']}]"
        print(f"query {r['query']}" + (f" (#{r['id']})" if r["id"] is not None else "") + label)
        for nb in r["neighbours"]:
            if nb["id"] is None:
                print(f"  {nb['rank']:>3}  (none found)")
                continue
            mark = "" if "correct" not in nb else ("  +" if nb["correct"] else "  -")
            lab = f"  [{nb['label']}]" if "label" in nb else ""
            print(f"  {nb['rank']:>3}  {nb['similarity']:.4f}  {nb['path']}{lab}{mark}")

    # every check has passed: only now is anything written
    from ibc_geo.utils.io import atomic_write, atomic_write_json

    if args.save_index:
        index.save(args.save_index, gallery=os.path.abspath(args.gallery), overwrite=args.overwrite)
        print(f"wrote {args.save_index} ({index.describe()})")
    if picture is not None:
        atomic_write(args.grid, lambda tmp: picture.save(tmp, format="PNG"), overwrite=args.overwrite)
        print(f"wrote {args.grid} ({picture.size[0]} x {picture.size[1]})")
    if args.out:
        atomic_write_json(args.out, {"gallery": args.gallery, "k": args.k, "index": index.describe(),
                                     "queries": results}, overwrite=args.overwrite)
        print(f"wrote {args.out}")


def console() -> int:
    return run(main)

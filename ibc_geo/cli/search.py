"""``ibc-search`` / ``python tools/search.py``: the nearest gallery items of query images or of gallery members.

    python tools/search.py --gallery E.npz (--query IMG [IMG ...] --cfg RUN/config.yaml --ckpt CKPT | --query-ids I [I ...])
                           --k K [--index FACTORY] [--params P] [--save-index F | --load-index F]
                           [--refine dba|aqe|mpn] [--grid G.png] [--thumb PX] [--out R.json] [--overwrite]
                           [KEY VALUE ...]

``--refine`` refines each query at test time before the search (:func:`ibc_geo.retrieval.search.refine_queries`):
its group is it and its ``k - 1`` nearest gallery items on the gallery's unrefined embeddings. ``dba``
and ``mpn`` need a gallery written by ``tools/embed.py --refine`` of the same method, whose recorded
parameters they use (an ``eval.refine_*`` override that contradicts them is refused); the refined
query searches the refined gallery, and a gallery member (``--query-ids``) is its stored refined row.
``aqe`` (alpha query expansion, ``eval.refine_k`` / ``eval.refine_alpha``) expands queries that then
search an unrefined gallery. A refined gallery searched without ``--refine`` is refused: its rows
live in the refined space.
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
    parser.add_argument("--refine", choices=["dba", "aqe", "mpn"],
                        help="refine each query from its nearest gallery items before the search: dba / mpn on a "
                             "gallery embedded with tools/embed.py --refine (its parameters), aqe (alpha query "
                             "expansion: eval.refine_k, eval.refine_alpha) on an unrefined one; mpn with --query needs "
                             "--cfg and --ckpt")
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


def query_refinement(args, gallery, cfg):
    """The :class:`~ibc_geo.evaluation.refine.Refinement` of the queries (None without one), or a
    one-line :class:`~ibc_geo.retrieval.errors.GalleryError`: a refined gallery without ``--refine``
    (or with another method), ``--refine dba|mpn`` on a gallery not written refined, an
    ``eval.refine_*`` override that contradicts the gallery's record, ``reciprocal`` groups for
    new queries."""
    from dataclasses import replace

    from ibc_geo.evaluation.refine import Refinement
    from ibc_geo.retrieval.errors import GalleryError, RetrievalError
    from ibc_geo.retrieval.gallery import describe_refinement

    record = gallery.refinement
    name = args.gallery
    if record is not None:
        desc = describe_refinement(record)
        if not args.refine:
            raise GalleryError(f"gallery {name} holds embeddings refined by {desc}: pass --refine {record['method']}")
        if args.refine != record["method"]:
            raise GalleryError(f"--refine {args.refine} contradicts gallery {name}, which holds embeddings refined "
                               f"by {desc}: pass --refine {record['method']}")
    elif args.refine in ("dba", "mpn"):
        raise GalleryError(f"--refine {args.refine} needs a gallery written refined (tools/embed.py --refine "
                           f"{args.refine}), but gallery {name} holds unrefined embeddings: embed it with --refine "
                           f"{args.refine}, or search it with --refine aqe (query expansion)")
    if not args.refine:
        return None
    base = Refinement.from_config(cfg)
    given = dict(zip(args.overrides[0::2], args.overrides[1::2]))
    if "eval.refine" in given and base.method != args.refine:
        raise RetrievalError(f"--refine {args.refine} and the override eval.refine {given['eval.refine']} contradict "
                             f"each other: give one")
    if record is None:
        refinement = replace(base, method=args.refine)
    else:
        for field, key in Refinement.KEYS.items():
            if key in given and field in record and field != "method":
                if getattr(base, field) != record[field]:
                    raise GalleryError(f"{key} {given[key]} contradicts gallery {name}, which holds embeddings "
                                       f"refined by {describe_refinement(record)}: drop the override (a refined "
                                       f"gallery's parameters are fixed when it is embedded)")
        known = {f: record[f] for f in ("k", "alpha", "neighbours", "k1", "k2") if f in record}
        try:
            refinement = replace(base, method=record["method"], **known)
        except (TypeError, ValueError) as e:
            raise GalleryError(f"gallery {name}: its refinement record {record} is not one tools/embed.py writes "
                               f"({e})") from None
    if refinement.neighbours != "knn" and (args.query or record is None):
        raise GalleryError(f"--refine {args.refine} groups each query with its nearest gallery items (knn); "
                           f"eval.refine_neighbours {refinement.neighbours} needs every item's own neighbour lists"
                           + (f" (gallery {name} was refined so: search its members with --query-ids)"
                              if record is not None else ": use eval.refine_neighbours knn"))
    return refinement


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.print_config:
        config_from_args(args)
    _check_arguments(parser, args)
    check_outputs(args)
    # the model's config for --query; the eval.refine_* keys (defaults without --cfg) for --refine
    cfg = config_from_args(args) if (args.query or args.refine) else None

    import numpy as np

    from ibc_geo.retrieval.errors import GalleryError, RetrievalError
    from ibc_geo.retrieval.gallery import describe_refinement, load_gallery
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
    refinement = query_refinement(args, gallery, cfg)
    if args.query:
        check_image_files(args.query, "query image")
        if int(cfg.model.embedding_dim) != gallery.base_dim:
            raise GalleryError(f"gallery {args.gallery} holds {gallery.base_dim}-d embeddings, but the model of {args.cfg} "
                               f"makes {cfg.model.embedding_dim}-d ones: expected a gallery embedded by this model "
                               f"(tools/embed.py --cfg {args.cfg} ...)")
    if refinement is not None:
        from ibc_geo.evaluation.refine import RefinementError

        try:
            refinement.check(n, bool(args.query_ids))
        except RefinementError as e:
            raise RetrievalError(f"gallery {args.gallery}: {e}") from None
    available = n - (1 if args.query_ids else 0)
    if args.k > available:
        raise RetrievalError(f"--k {args.k} exceeds the {available} items of gallery {args.gallery} each query can "
                             f"retrieve" + (" (itself excluded)" if args.query_ids else ""))
    query_labels = None  # class names (str) or labels (int) of the queries, for correctness
    groups = None  # the gallery rows each refined query was grouped with
    if args.query_ids:
        ids = np.asarray(args.query_ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise RetrievalError(f"query id {int(bad[0])} is not a row of gallery {args.gallery} (expected 0..{n - 1})")
        vectors, exclude = gallery.embeddings[ids], ids  # a refined gallery: its stored refined rows
        if refinement is not None and not refinement.refines_database:  # aqe: expand the members
            from ibc_geo.retrieval.search import refine_queries

            vectors, groups = refine_queries(gallery.base_embeddings[ids], gallery.base_embeddings, refinement,
                                             exclude=ids)
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
        mpn = refinement is not None and refinement.method == "mpn"
        if mpn:
            _check_mpn(args, gallery, embedder)
        vectors, features = embed_images(embedder, args.query, with_features=True)
        exclude, query_paths = None, list(args.query)
        if refinement is not None:
            from ibc_geo.retrieval.search import refine_queries

            run_mpn = None
            if mpn:
                from ibc_geo.evaluation.refine import mpn_refine

                def run_mpn(f, g):
                    return mpn_refine(embedder.model.mpn, f, g, embedder.device, refinement.batch_nodes)
            vectors, groups = refine_queries(vectors, gallery.base_embeddings, refinement, query_features=features,
                                             features=gallery.features, run_mpn=run_mpn)
        if args.labels_from_folders and gallery.labels is not None:
            query_labels = folder_names(args.query)
    if refinement is not None:
        print(f"queries refined by {describe_refinement(refinement.params())}"
              + (" (the gallery's record)" if gallery.refinement is not None else ""))

    if args.load_index:
        index = SearchIndex.load(args.load_index, gallery.embeddings, gallery.fingerprint, args.gallery, args.params)
    elif args.index or args.save_index:
        index = SearchIndex.build(gallery.embeddings, args.index or "Flat", args.params, gallery.fingerprint,
                                  source=f"gallery {args.gallery}", train_size=args.train_size)
    else:
        index = SearchIndex(gallery.embeddings, fingerprint=gallery.fingerprint)
    found = index.retrieve(vectors, args.k, exclude=exclude)
    sims, nbrs = found.similarities, found.indices  # -1: an approximate index found fewer

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
        if groups is not None:  # the gallery rows the query was refined with (itself first, not listed)
            results[-1]["group"] = [int(j) for j in groups[qi]]

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
                                     "refinement": None if refinement is None else refinement.params(),
                                     "queries": results}, overwrite=args.overwrite)
        print(f"wrote {args.out}")


def _check_mpn(args, gallery, embedder) -> None:
    """``--refine mpn`` of a new query needs the MPN that refined the gallery (its hash recorded)."""
    from ibc_geo.retrieval.embed import mpn_hash
    from ibc_geo.retrieval.errors import GalleryError

    mpn = getattr(embedder.model, "mpn", None)
    if mpn is None:
        raise GalleryError(f"--refine mpn needs a trained MPN, but checkpoint {args.ckpt or '--init'} has none "
                           f"(graph.topology {embedder.cfg.graph.topology}); gallery {args.gallery} was refined by "
                           f"the MPN of {gallery.meta.get('checkpoint') or '--init'}")
    stored = gallery.meta.get("mpn_hash")
    if stored and stored != mpn_hash(mpn):
        raise GalleryError(f"gallery {args.gallery} was refined by another MPN (hash {stored}, checkpoint "
                           f"{gallery.meta.get('checkpoint') or '--init'}) than that of {args.ckpt or '--init'} "
                           f"({mpn_hash(mpn)}): expected the same model for queries and gallery")


def console() -> int:
    return run(main)

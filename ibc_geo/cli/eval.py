"""``tools/eval.py``: metrics of a checkpoint, or of saved embeddings without any model.

    python tools/eval.py --cfg CFG --ckpt CKPT [--split test|val] [--refine dba|aqe|mpn] [--out PATH] [--overwrite] [KEY VALUE ...]
    python tools/eval.py --cfg CFG --init [--split test|val]      # the untrained / ImageNet baseline
    python tools/eval.py --embeddings E.npy --labels L.npy [--query-mask Q.npy]
                         [--recall-k 1 10 100 1000] [--out PATH] [--cfg CFG] [KEY VALUE ...]

Prints a table and writes JSON (``--out``; default ``metrics_<split>.json`` (``metrics_init_<split>.json``
for ``--init``) in the folder of the run's ``--cfg RUN/config.yaml``, or in ``output_dir`` for
another config; ``metrics_<E>.json`` beside ``E.npy`` for embeddings) holding the metric keys of
:func:`ibc_geo.evaluation.evaluate_embeddings` plus ``dataset``, ``split``, ``num_items`` and
``num_classes``; with ``--refine`` (or ``eval.refine``) also ``refined``: the refinement's parameters, the
metrics of the refined embeddings and the refinement's seconds, printed as a second table. NaN metrics (e.g. MAP@R when every query is lone) are written as ``null``.
A missing input file or a bad config exits with code 2 and a one-line message
(:class:`EvalInputError`, a :class:`~ibc_geo.utils.errors.UserError`). The output is checked before
any metric is computed: an existing file is replaced only with ``--overwrite``, and a run's own
files (``metrics.json``, checkpoints, ``config.yaml``) and the command's inputs never are.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run
from ibc_geo.utils.errors import UserError


class EvalInputError(UserError):
    """A missing or malformed input of ``tools/eval.py`` (embeddings, labels, mask, checkpoint)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/eval.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Retrieval metrics (Recall@K, MAP@R, R-precision, precision@1, NMI) of a checkpoint, of\n"
                    "the model before training, or of saved embeddings without any model:\n\n"
                    "  tools/eval.py --cfg RUN/config.yaml --ckpt RUN/checkpoints/best.pt [--split test|val]\n"
                    "  tools/eval.py --cfg CFG --init [--split test|val]\n"
                    "  tools/eval.py --embeddings E.npy --labels L.npy [--query-mask Q.npy] [--recall-k 1 10]\n\n"
                    "It prints a table and writes JSON (--out; by default metrics_<split>.json beside the run's\n"
                    "config.yaml, never over the run's metrics.json; an existing file only with --overwrite).")
    src = p.add_mutually_exclusive_group()  # one is needed, unless --print-config
    src.add_argument("--ckpt", metavar="CKPT", help="checkpoint to evaluate (needs the config of its run)")
    src.add_argument("--embeddings", metavar="E.npy", help="saved [N, D] embeddings; no model is built")
    src.add_argument("--init", action="store_true",
                     help="the model as the config initialises it (ImageNet or seeded random weights): "
                          "the baseline before training")
    p.add_argument("--labels", metavar="L.npy", help="[N] labels of --embeddings")
    p.add_argument("--query-mask", metavar="Q.npy", help="[N] bool, True = query, False = gallery (In-Shop)")
    p.add_argument("--split", choices=["test", "val"], default=None, help="split of --ckpt (default test)")
    p.add_argument("--recall-k", type=int, nargs="+", metavar="K", help="Ks of Recall@K (default cfg.eval.recall_k)")
    p.add_argument("--refine", choices=["none", "dba", "aqe", "mpn"], default=None,
                   help="also report the metrics after test-time refinement (eval.refine; its parameters are the "
                        "eval.refine_* keys, e.g. eval.refine_k 8); the backbone-only metrics stay the headline")
    p.add_argument("--out", metavar="PATH", help="metrics JSON to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (never a run's own metrics.json, nor an input of this command)")
    add_config_arguments(p)
    return p


def _load_npy(path: str, what: str):
    import numpy as np

    if not os.path.isfile(path):
        raise EvalInputError(f"{what} file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise EvalInputError(f"{what} file {path} is not a .npy array (written by numpy.save); a text or "
                             f"other file cannot be read as {what}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise EvalInputError(f"cannot read {what} file {path}: {e}") from None


def _json_ready(metrics: dict) -> dict:
    import numpy as np

    out = {}
    for key, value in metrics.items():
        if isinstance(value, (np.integer,)):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            value = None if math.isnan(float(value)) else float(value)
        out[key] = value
    return out


def _evaluate_saved(args, cfg, explicit_cfg: bool) -> tuple[dict, Optional[str]]:
    import numpy as np

    from ibc_geo.evaluation.metrics import evaluate_embeddings

    if not args.labels:
        raise EvalInputError("--embeddings needs --labels L.npy")
    emb = _load_npy(args.embeddings, "embeddings")
    labels = _load_npy(args.labels, "labels")
    mask = _load_npy(args.query_mask, "query mask") if args.query_mask else None
    if emb.ndim != 2 or labels.ndim != 1 or emb.shape[0] != labels.shape[0]:
        raise EvalInputError(f"embeddings {args.embeddings} must be [N, D] and labels {args.labels} [N]; "
                          f"got {emb.shape} and {labels.shape}")
    if mask is not None and (mask.dtype != np.bool_ or mask.shape != labels.shape):
        raise EvalInputError(f"query mask {args.query_mask} must be bool [{labels.shape[0]}], "
                          f"got {mask.dtype} {mask.shape}")
    recall_k = args.recall_k or list(cfg.eval.recall_k)
    warn_degenerate(emb, args.embeddings)
    from ibc_geo.evaluation.refine import Refinement, RefinementError, evaluate_refined

    refinement = Refinement.from_config(cfg)
    if refinement.method == "mpn":
        raise EvalInputError(f"--refine mpn needs the model's MPN: evaluate the checkpoint (--cfg RUN/config.yaml "
                             f"--ckpt CKPT --refine mpn), not saved embeddings {args.embeddings}")
    options = dict(recall_k=recall_k, nmi=cfg.eval.nmi, kmeans_iters=cfg.eval.kmeans_iters,
                   kmeans_redo=cfg.eval.kmeans_redo, seed=cfg.seed, chunk_size=cfg.eval.chunk_size)
    try:
        metrics, retrieval = evaluate_embeddings(emb, labels, query_mask=mask, return_retrieval=True,
                                                 min_k=refinement.search_k if refinement.enabled else 0, **options)
        if refinement.enabled:
            metrics["refined"] = evaluate_refined(emb, labels, retrieval, refinement, mask, **options)
    except RefinementError:
        raise
    except ValueError as e:
        raise EvalInputError(f"cannot evaluate {args.embeddings}: {e}") from None
    dataset = cfg.data.name if explicit_cfg else None
    return metrics, dataset


def default_checkpoint_output(output_dir: str, split: str, prefix: str = "metrics") -> str:
    """``output_dir/<prefix>_<split>.json``: evaluation never writes a run's ``metrics.json``, which
    the trainer writes last to mark a run finished."""
    return os.path.join(output_dir, f"{prefix}_{split}.json")


def evaluation_folder(args, cfg) -> str:
    """Where an evaluation of a checkpoint lands by default: the folder of ``--cfg`` when it is a
    run's ``config.yaml`` (also a copied or moved run folder, whatever ``output_dir`` its config
    names), else the config's ``output_dir``."""
    from ibc_geo.utils.run_dir import RunDir

    if args.cfg and RunDir(os.path.dirname(os.path.abspath(args.cfg))).looks_like_run() \
            and os.path.basename(args.cfg) == "config.yaml":
        return os.path.dirname(os.path.abspath(args.cfg))
    return cfg.output_dir


def output_path(args, cfg) -> str:
    """The JSON this evaluation writes: ``--out``, or its default (see the module docstring)."""
    if args.out:
        return args.out
    if args.embeddings:
        stem = os.path.splitext(os.path.basename(args.embeddings))[0]
        return os.path.join(os.path.dirname(os.path.abspath(args.embeddings)), f"metrics_{stem}.json")
    split = args.split or "test"
    return default_checkpoint_output(evaluation_folder(args, cfg), split, "metrics_init" if args.init else "metrics")


def warn_degenerate(emb, source: str) -> None:
    """Warn, naming the count, when embeddings cannot rank anything: all zero, all equal, or many
    rows that are zero or exact copies of another row (their neighbours are ties, broken by index)."""
    import logging

    import numpy as np

    log = logging.getLogger("ibc_geo")
    n = len(emb)
    if n == 0:
        return
    zero = int((~np.any(emb != 0, axis=1)).sum())
    if zero == n:
        log.warning("all %d embeddings in %s are zero: every neighbour is a tie, broken by index, so the metrics "
                    "say nothing about the model", n, source)
        return
    if bool(np.all(emb == emb[:1])):
        log.warning("all %d embeddings in %s are the same vector: every neighbour is a tie, broken by index, so "
                    "the metrics say nothing about the model", n, source)
        return
    distinct = len(np.unique(np.ascontiguousarray(emb).view(np.dtype((np.void, emb.dtype.itemsize * emb.shape[1])))))
    copies = n - distinct
    if zero or copies > n // 10:
        log.warning("%s: %d of %d embeddings are zero and %d are exact copies of another row (%d distinct): "
                    "their neighbours are ties, broken by index", source, zero, n, copies, distinct)


def _evaluate_checkpoint(args, cfg) -> tuple[dict, Optional[str]]:
    from ibc_geo.engine import evaluate_checkpoint, evaluate_initial_model

    refine = cfg.eval.refine != "none"
    if args.init:
        return evaluate_initial_model(cfg, args.split or "test", refine=refine), cfg.data.name
    return evaluate_checkpoint(cfg, args.ckpt, args.split or "test", refine=refine), cfg.data.name


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.print_config:
        config_from_args(args)  # prints the resolved config and exits 0
    if not (args.ckpt or args.embeddings or args.init):
        parser.error("one of the arguments --ckpt --embeddings --init is required")
    if args.ckpt and not os.path.isfile(args.ckpt):
        raise EvalInputError(f"checkpoint file not found: {args.ckpt}")
    explicit_cfg = bool(args.cfg or args.overrides or args.print_config)
    if args.refine:
        args.overrides = list(args.overrides or []) + ["eval.refine", args.refine]
    # Saved embeddings need no dataset: without --cfg or overrides the schema defaults serve
    # (eval.recall_k, eval.nmi, ...), unchecked since no dataset is read.
    if explicit_cfg or args.ckpt or args.init or args.refine:
        cfg = config_from_args(args)
    else:
        from ibc_geo.config import default_config

        cfg = default_config()
    from ibc_geo.utils.io import check_output

    # where the record goes, checked before any metric is computed
    out = output_path(args, cfg)
    check_output(out, overwrite=args.overwrite,
                 inputs=[args.cfg, args.ckpt, args.embeddings, args.labels, args.query_mask])
    if args.embeddings:
        metrics, dataset = _evaluate_saved(args, cfg, explicit_cfg)
    else:
        # Under torchrun each rank embeds its shard of the split; rank 0 prints and writes.
        from ibc_geo.utils.distributed import init_from_env
        from ibc_geo.utils.runtime import resolve_device

        init_from_env(resolve_device(cfg.device))
        metrics, dataset = _evaluate_checkpoint(args, cfg)
    from ibc_geo.evaluation.metrics import format_table
    from ibc_geo.utils.io import atomic_write_json
    from ibc_geo.utils.runtime import is_main_process

    if not is_main_process():
        return 0

    refined = metrics.pop("refined", None)
    record = _json_ready(metrics)
    if refined is not None:
        record["refined"] = {"refinement": refined["refinement"], "metrics": _json_ready(refined["metrics"]),
                             "seconds": refined["seconds"]}
    record.update(dataset=dataset, split=args.split or ("test" if (args.ckpt or args.init) else None))
    record.setdefault("num_items", metrics.get("num_items"))
    record.setdefault("num_classes", metrics.get("num_classes"))
    print(format_table(metrics))
    if refined is not None:
        print(f"\nrefined ({' '.join(f'{k} {v}' for k, v in refined['refinement'].items())}; "
              f"{refined['seconds']:.2f} s):")
        print(format_table(refined["metrics"]))
    atomic_write_json(out, record, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def console() -> int:
    return run(main)

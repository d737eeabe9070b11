"""Test-time refinement of trained runs on their test split: every method and group size, paired over seeds.

    python benchmarks/refine_dev.py --runs output/ablations/mpn_attention/topology=full/seed=* \
        --control output/ablations/mpn_attention/topology=none/seed=* [--k 4 8 16] [--json OUT.json]

Each run folder's ``checkpoints/best.pt`` embeds its test split once (backbone features), and that
one evaluation's retrieval result feeds every refinement: ``none`` (the headline), ``dba``, ``aqe``
(alpha 3), ``mpn`` over the k nearest (``knn``) and over the official k-reciprocal groups (k1 30,
k2 15), at each group size k. Runs without an MPN (the control) get no ``mpn`` rows. Prints one
Markdown table of the mean (± std over seeds) R@1, MAP@R and NMI, the paired difference in MAP@R to
``none`` of the same run, and the refinement's time per 10,000 items (groups and new embeddings,
without the new search; one process, this machine's threads). Writes nothing unless ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

import numpy as np
import torch

from ibc_geo.config import load_config
from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
from ibc_geo.engine.checkpoint import load_checkpoint
from ibc_geo.engine.evaluator import _metric_options, model_from_checkpoint
from ibc_geo.evaluation import evaluate_embeddings, extract_embeddings
from ibc_geo.evaluation.refine import Refinement, evaluate_refined, mpn_refine
from ibc_geo.utils.run_dir import RunDir

METRICS = ("recall@1", "map@r", "nmi")


def refinements(ks, with_mpn: bool):
    yield "none", Refinement()
    for k in ks:
        yield f"dba k={k}", Refinement("dba", k=k)
        yield f"aqe k={k}", Refinement("aqe", k=k)
        if with_mpn:
            yield f"mpn-knn k={k}", Refinement("mpn", k=k)
            yield f"mpn-reciprocal k={k}", Refinement("mpn", k=k, neighbours="reciprocal")


def measure_run(run_dir: str, ks) -> dict:
    """``{row name: {metric: value, "seconds_per_10k": s}}`` for one run folder."""
    folder = RunDir(run_dir)
    cfg = load_config(str(folder.config), ["device", "cpu"])
    model = model_from_checkpoint(cfg, load_checkpoint(folder.best), str(folder.best))
    model.eval()
    test_set = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    features, labels = extract_embeddings(model, build_eval_loader(cfg, test_set), "cpu", normalize=False)
    options = _metric_options(cfg)
    depth = max(max(ks) - 1, 30)
    plain, retrieval = evaluate_embeddings(features, labels, min_k=depth, return_retrieval=True, **options)
    run_mpn = None
    if model.mpn is not None:
        run_mpn = lambda f, g: mpn_refine(model.mpn, f, g, "cpu")  # noqa: E731
    rows = {}
    for name, refinement in refinements(ks, model.mpn is not None):
        if not refinement.enabled:
            rows[name] = {m: plain[m] for m in METRICS} | {"seconds_per_10k": 0.0}
            continue
        start = time.perf_counter()
        record = evaluate_refined(features, labels, retrieval, refinement, run_mpn=run_mpn, **options)
        rows[name] = {m: record["metrics"][m] for m in METRICS}
        rows[name]["seconds_per_10k"] = record["seconds"] * 10000 / len(labels)
        print(f"{os.path.normpath(run_dir)} {name}: " + " ".join(f"{m} {100 * rows[name][m]:.2f}" for m in METRICS)
              + f" ({time.perf_counter() - start:.1f} s with the new search)", flush=True)
    return rows


def table(groups: dict) -> str:
    """Markdown: per model (full / none) and refinement, mean ± std over seeds and the paired MAP@R gain."""
    lines = ["| model | refinement | seeds | R@1 | MAP@R | NMI | MAP@R − none (paired) | s / 10k items |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for model, runs in groups.items():
        names = list(runs[0].keys())
        for name in names:
            vals = {m: np.array([100 * r[name][m] for r in runs]) for m in METRICS}
            gain = np.array([100 * (r[name]["map@r"] - r["none"]["map@r"]) for r in runs])
            secs = np.mean([r[name]["seconds_per_10k"] for r in runs])
            cell = lambda v: f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"  # noqa: E731
            lines.append(f"| {model} | {name} | {len(runs)} | {cell(vals['recall@1'])} | {cell(vals['map@r'])} | "
                         f"{cell(vals['nmi'])} | {'–' if name == 'none' else cell(gain)} | "
                         f"{'–' if name == 'none' else f'{secs:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders of the model with an MPN (one per seed)")
    parser.add_argument("--control", nargs="*", default=[], help="run folders of the control (e.g. topology none)")
    parser.add_argument("--k", nargs="+", type=int, default=[4, 8, 16], help="group sizes (default 4 8 16)")
    parser.add_argument("--json", help="also write every run's rows here")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    groups = defaultdict(list)
    raw = {}
    for label, runs in (("MPN run", args.runs), ("control", args.control)):
        for run in runs:
            rows = measure_run(run, args.k)
            cfg = load_config(str(RunDir(run).config), [])
            groups[f"{cfg.graph.topology}"].append(rows)
            raw[os.path.normpath(run)] = rows
    print(table(groups))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()

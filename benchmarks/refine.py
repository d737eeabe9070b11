"""The cost of each test-time refinement at 100,000 and 1,000,000 items, as a ratio to the exact search.

    python benchmarks/refine.py [--sizes 100000 1000000] [--dim 512] [--k 8] [--search-queries 5000]
                                [--refine-items 200000] [--mpn-items 20000] [--out RESULTS_refine.md]

Synthetic clustered items (L2-normalised ``dim``-d vectors, 50 a cluster, cluster centres plus
noise of twice their norm: the gallery of ``benchmarks/search.py``). For each size N:

* **exact search**: the evaluation's search (``retrieve_split``, every item against all others,
  ``k1 = 30`` neighbours deep, what the reciprocal rule reads) timed on ``--search-queries`` queries
  against all N items and scaled by N / queries (its cost is exactly linear in the queries).
* **dba**, **aqe**: groups of the item and its k - 1 nearest, the new embeddings (the refinement's
  own time, not the search of the refined set), timed on ``--refine-items`` items and scaled.
* **reciprocal groups**: the official k-reciprocal rule over all N items (its lists of lists need
  every item's neighbours). The neighbour table it reads is the exact top-30 within each item's
  cluster of 50 (a stand-in for the real search, which is timed above; computed outside the timer).
* **mpn**: an MPN of the official recipe (1 layer, 2 heads, input norm and projection, sink;
  untrained: the cost does not depend on the weights) on the groups' fully connected graphs,
  ``eval.refine_batch_nodes`` 8192 nodes a forward pass, timed on ``--mpn-items`` groups and scaled.

Every figure is printed as seconds for all N items and as a ratio to the exact search of the same
N measured in the same run. One process; the threads torch and faiss choose.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ibc_geo.evaluation.knn import l2_normalize  # noqa: E402
from ibc_geo.evaluation.refine import aqe, dba, knn_groups, mpn_refine, reciprocal_groups  # noqa: E402
from ibc_geo.evaluation.retrieval import retrieve  # noqa: E402
from ibc_geo.nn import MessagePassingNetwork  # noqa: E402

CLUSTER = 50
K1, K2 = 30, 15


def items(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // CLUSTER + 1, dim), dtype=np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        rows = np.arange(s, min(s + 65536, n))
        x[rows] = centres[rows // CLUSTER] + 2.0 * rng.standard_normal((len(rows), dim), dtype=np.float32)
    return l2_normalize(x)


def cluster_neighbours(x: np.ndarray, depth: int) -> np.ndarray:
    """Each item's ``depth`` nearest others within its cluster of 50 (exact there), ``[N, depth]``."""
    n = len(x)
    out = np.empty((n, depth), np.int64)
    for start in range(0, n, CLUSTER):
        block = x[start:start + CLUSTER]
        sims = block @ block.T
        np.fill_diagonal(sims, -np.inf)
        out[start:start + len(block)] = start + np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(n: int, dim: int, k: int, search_queries: int, refine_items: int, mpn_items: int) -> dict:
    x = items(n, dim)
    q = min(n, search_queries)
    rows = np.arange(q)
    search_s, _ = timed(lambda: retrieve(x[rows], x, K1 + 1, chunk_size=4096))  # + 1: itself, then drop it
    out = {"exact search": search_s * n / q}
    table = cluster_neighbours(x, K1)
    r = min(n, refine_items)
    groups = knn_groups(np.arange(r), table[:r], k)
    out["dba"] = timed(lambda: dba(x, groups))[0] * n / r
    out["aqe"] = timed(lambda: aqe(x, groups, 3.0))[0] * n / r
    out["reciprocal groups"] = timed(lambda: reciprocal_groups(x, table, k, K1, K2))[0]
    torch.manual_seed(0)
    mpn = MessagePassingNetwork(dim, num_classes=100, num_layers=1, heads=2, sink=True, input_norm=True,
                                input_proj=True).eval()
    m = min(n, mpn_items)
    with torch.no_grad():
        out["mpn (knn groups)"] = timed(lambda: mpn_refine(mpn, x, groups[:m] if m <= r else
                                                           knn_groups(np.arange(m), table[:m], k)))[0] * n / m
    out["mpn-reciprocal (groups + mpn)"] = out["reciprocal groups"] + out["mpn (knn groups)"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=8, help="group size, the item included (eval.refine_k)")
    parser.add_argument("--search-queries", type=int, default=5000)
    parser.add_argument("--refine-items", type=int, default=200_000)
    parser.add_argument("--mpn-items", type=int, default=20_000)
    parser.add_argument("--out", help="write the Markdown table here as well")
    args = parser.parse_args(argv)
    results = {}
    for n in args.sizes:
        results[n] = measure(n, args.dim, args.k, args.search_queries, args.refine_items, args.mpn_items)
        print(f"N = {n}: " + ", ".join(f"{name} {s:.1f} s" for name, s in results[n].items()), flush=True)
    names = list(results[args.sizes[0]])
    lines = [f"{args.dim}-d items, k = {args.k}, k1 = {K1}, k2 = {K2}; {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
             "", "| | " + " | ".join(f"N = {n:,}: seconds | x exact search" for n in args.sizes) + " |",
             "|---|" + "---:|---:|" * len(args.sizes)]
    for name in names:
        cells = []
        for n in args.sizes:
            s, base = results[n][name], results[n]["exact search"]
            cells.append(f"{s:,.1f} | {s / base:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

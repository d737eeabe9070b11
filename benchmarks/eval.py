"""Benchmark of ``ibc_geo.evaluation.evaluate_embeddings`` at full benchmark scale (issues 5 and 11).

    pip install -e ".[bench]"      # pytorch-metric-learning and psutil, for this script only
    python benchmarks/eval.py [--quick] [--datasets SOP ...] [--methods ...] [--repeats 3] [--out FILE]
    python benchmarks/eval.py --nmi-check [--seeds 10] [--out FILE]

Synthetic L2-normalised 512-d embeddings with the shapes of the test splits:

* SOP-shaped: 60,502 items in 11,316 classes of 2 to 12 items (Stanford Online Products' test
  split has exactly these counts and bounds; its per-class histogram is not available offline,
  so sizes are drawn with SOP's mean, 5.35, and one class of each extreme size).
  ``SOP/4``: the same with a quarter of the items and classes (15,125 in 2,829), for repeats.
* CUB-shaped: 5,924 items, 100 classes (41-60 each). Cars-shaped: 8,131 items, 98 classes.

Each method runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own:

* ``ibc_geo``: ``evaluate_embeddings`` at its defaults (those of the config schema) - Recall@K
  for the dataset's Ks (SOP: 1 10 100 1000), MAP@R, R-precision, precision@1 and NMI
  (``ibc_geo.evaluation.kmeans``: k-means++, ``eval.kmeans_redo`` restarts capped at large
  N x k, Lloyd up to ``eval.kmeans_iters`` iterations with scikit-learn's tol) in one call.
* ``kmeans``: that k-means alone (the NMI's share of ``ibc_geo``); reports restarts and iterations.
* ``search``: only faiss ``IndexFlatIP.search`` of all queries at once with ``ibc_geo``'s k
  (max(largest K, largest class) + 1 for the query itself).
* ``floor``: ``search`` plus faiss's own k-means (``faiss.Kmeans``: random init, 20 iterations,
  one run) and the final assignment; no metric at all (the floor of issue 5, unchanged).
  ``floor_r`` does the same with pytorch-metric-learning's k (largest class size), which
  cannot give Recall@1000.
* ``pml``: pytorch-metric-learning's ``AccuracyCalculator(k="max_bin_count")`` with
  precision_at_1, r_precision, mean_average_precision_at_r and NMI (its defaults: faiss
  ``IndexFlatL2``, faiss k-means with 20 iterations). AMI is left out (scikit-learn's expected
  mutual information over 11,316 classes runs for hours).
* ``paper``: the paper's code (dvl-tum/intra_batch ``evaluation``): scikit-learn
  ``pairwise_distances`` on all items, a full ``np.argsort`` of the N x N matrix, Recall@K from
  columns 1..K (assumes the query ranks first), and scikit-learn ``KMeans(n_classes)`` for NMI
  (the paper's code skips NMI on SOP; so does this column). On SOP it runs on whole classes up
  to ``--paper-n`` items, the largest N whose N x N float32 + int64 matrices fit in free memory.
* ``brute``: numpy brute force (float32 matmul per chunk, exact top-(R+1) by argpartition,
  ties by index, the query removed by index) for Recall@1, MAP@R and R-precision: a value check.

``--repeats R`` runs the list of methods R times, interleaved (all methods, then all again), and
reports each ratio as the median over the repeats of the per-repeat ratio; every row records the
1-minute load average when it started.

``--nmi-check`` compares the NMI of ``ibc_geo.evaluation.kmeans`` with scikit-learn's
``KMeans(n_clusters=k, n_init=10)`` (k-means++, max_iter 300, tol 1e-4) seed by seed: on
CUB-shaped data made hard enough for a trained model's NMI (per-class noise uniform in
[2.5, 4.5]: NMI ~0.7, Recall@1 ~0.6) and on SOP-shaped data at a tenth and a quarter of the
size (the timing data). Restart r of ``kmeans`` does not depend on how many restarts run, so
one run of 10 restarts gives the best-of-R NMI for every R <= 10.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 512
SHAPES = {  # name: (items, classes, min size, max size, Recall@K's Ks)
    "SOP": (60502, 11316, 2, 12, (1, 10, 100, 1000)),
    "SOP/4": (15125, 2829, 2, 12, (1, 10, 100, 1000)),
    "CUB": (5924, 100, 41, 60, (1, 2, 4, 8)),
    "Cars": (8131, 98, 48, 136, (1, 2, 4, 8)),
}
QUICK_SHAPES = {
    "SOP": (6050, 1132, 2, 12, (1, 10, 100, 1000)),
    "SOP/4": (3025, 566, 2, 12, (1, 10, 100, 1000)),
    "CUB": (1170, 20, 41, 60, (1, 2, 4, 8)),
}


# --------------------------------------------------------------------------------------------
# data


def class_sizes(n: int, c: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """``c`` sizes in [lo, hi] summing to ``n``, with one class of each extreme size."""
    if not lo * (c - 1) + hi <= n <= hi * (c - 1) + lo:
        raise ValueError(f"cannot split {n} items into {c} classes of {lo}..{hi} with one of each extreme")
    p = (n / c - lo) / (hi - lo)
    sizes = lo + rng.binomial(hi - lo, p, size=c)
    sizes[0], sizes[1] = lo, hi
    while sizes.sum() != n:
        i = rng.integers(2, c)
        step = 1 if sizes.sum() < n else -1
        if lo <= sizes[i] + step <= hi:
            sizes[i] += step
    return sizes


def make_dataset(n: int, c: int, lo: int, hi: int, seed: int = 0, noise: float = 2.2, spread: float = 0.0):
    """Clustered unit vectors: class centre + isotropic noise, L2-normalised; shuffled order.

    The noise of each class has standard deviation ``noise`` (``spread`` > 0: drawn per class
    uniformly from [noise - spread, noise + spread]: some classes tight, some diffuse).
    """
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, c, lo, hi, rng)
    labels = np.repeat(np.arange(c), sizes)
    centres = rng.standard_normal((c, DIM), dtype=np.float32)
    if spread:
        sigma = rng.uniform(noise - spread, noise + spread, c).astype(np.float32)[labels, None]
    else:
        sigma = np.float32(noise)
    x = centres[labels] + sigma * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), labels[perm].astype(np.int64)


# --------------------------------------------------------------------------------------------
# workers (one per subprocess)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _search_k(labels: np.ndarray, ks) -> tuple[int, int]:
    max_r = int(np.bincount(np.unique(labels, return_inverse=True)[1]).max()) - 1
    return min(len(labels) - 1, max(max(ks), max_r)), max_r


def work_ibc_geo(x, y, ks, dataset):
    from ibc_geo.evaluation import evaluate_embeddings

    m = evaluate_embeddings(x, y, recall_k=ks, nmi=True, seed=0)  # the config's k-means defaults
    return {k: v for k, v in m.items() if not k.startswith("num_")}


def work_kmeans(x, y, ks, dataset):
    import inspect

    from ibc_geo.evaluation import evaluate_embeddings, kmeans, nmi_score

    defaults = inspect.signature(evaluate_embeddings).parameters
    iters, redo = defaults["kmeans_iters"].default, defaults["kmeans_redo"].default
    # evaluate_embeddings clusters its L2-normalised copy; x is unit-norm already
    r = kmeans(x, len(np.unique(y)), iters=iters, redo=redo, seed=0)
    return {"nmi": nmi_score(y, r.labels), "_info": f"{r.restarts} restart(s) of {redo}, "
            f"kept restart {r.restart}: {r.n_iter} Lloyd iterations (max {iters})"}


def work_search(x, y, ks, dataset):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    index.search(x, _search_k(y, ks)[0] + 1)
    return {}


def _faiss_floor(x, y, k):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    index.search(x, k + 1)
    c = len(np.unique(y))
    km = faiss.Kmeans(x.shape[1], c, niter=20, seed=0, verbose=False,
                      max_points_per_centroid=len(x), min_points_per_centroid=1)
    km.train(x)
    km.index.search(x, 1)
    return {}


def work_floor(x, y, ks, dataset):
    return _faiss_floor(x, y, _search_k(y, ks)[0])


def work_floor_r(x, y, ks, dataset):
    return _faiss_floor(x, y, _search_k(y, ks)[1])


def work_pml(x, y, ks, dataset):
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
                              k="max_bin_count", device=torch.device("cpu"))
    acc = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    return {"precision@1": acc["precision_at_1"], "r_precision": acc["r_precision"],
            "map@r": acc["mean_average_precision_at_r"], "nmi": acc["NMI"]}


def work_paper(x, y, ks, dataset):
    import sklearn.cluster
    import sklearn.metrics
    from sklearn.metrics.pairwise import pairwise_distances

    out = {}
    if dataset != "SOP":  # the paper's code computes NMI on CUB and Cars only
        # n_init=10: the default of the scikit-learn the paper's code ran (1.4+ defaults to 1 run)
        cluster = sklearn.cluster.KMeans(len(np.unique(y)), n_init=10).fit(x).labels_
        out["nmi"] = sklearn.metrics.normalized_mutual_info_score(y, cluster)
    distances = pairwise_distances(x)
    indices = np.argsort(distances, axis=1)[:, 1:max(ks) + 1]
    del distances
    nbr = y[indices]
    for k in ks:
        out[f"recall@{k}"] = float(np.mean((nbr[:, :k] == y[:, None]).any(axis=1)))
    return out


def work_brute(x, y, ks, dataset, chunk=1024):
    """Recall@1, MAP@R, R-precision with plain numpy, written independently of ibc_geo."""
    n = len(y)
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    _, inv = np.unique(y, return_inverse=True)
    r_all = counts[inv] - 1
    kb = int(r_all.max()) + 1  # R neighbours plus the query itself
    hit1, aps, rps = [], [], []
    for s in range(0, n, chunk):
        sims = x[s:s + chunk] @ x.T
        cand = np.argpartition(-sims, kb, axis=1)[:, :kb + 1]
        cs = np.take_along_axis(sims, cand, axis=1)
        order = np.lexsort((cand, -cs), axis=1)
        cand = np.take_along_axis(cand, order, axis=1)
        for row in range(cand.shape[0]):
            q = s + row
            nb = cand[row][cand[row] != q][:kb - 1] if q in cand[row] else cand[row][:kb - 1]
            rel = y[nb] == y[q]
            hit1.append(rel[0])
            r = r_all[q]
            if r:
                prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
                aps.append(float((prec * rel[:r]).sum() / r))
                rps.append(float(rel[:r].sum() / r))
    return {"recall@1": float(np.mean(hit1)), "map@r": float(np.mean(aps)), "r_precision": float(np.mean(rps))}


WORKERS = {"ibc_geo": work_ibc_geo, "kmeans": work_kmeans, "search": work_search, "floor": work_floor,
           "floor_r": work_floor_r, "pml": work_pml, "paper": work_paper, "brute": work_brute}


def run_worker(method: str, data: str, ks, dataset: str, limit: int) -> None:
    x = np.load(data + "_x.npy")
    y = np.load(data + "_y.npy")
    if limit and limit < len(y):  # whole classes up to `limit` items (classes are shuffled)
        classes = np.unique(y)
        rng = np.random.default_rng(0)
        sizes = np.bincount(np.unique(y, return_inverse=True)[1])
        order = rng.permutation(len(classes))
        keep_classes = classes[order][np.cumsum(sizes[order]) <= limit]
        keep = np.isin(y, keep_classes)
        x, y = np.ascontiguousarray(x[keep]), y[keep]
    # Imports happen before the clock starts and the baseline RSS is taken, for every method.
    import faiss  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import ibc_geo.evaluation  # noqa: F401
    if method == "pml":
        import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401
    base = _rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    metrics = WORKERS[method](x, y, ks, dataset)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    peak = usage.ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": peak, "base_mb": base, "n": int(len(y)),
                      "classes": int(len(np.unique(y))), "metrics": metrics}))


# --------------------------------------------------------------------------------------------
# driver


def measure(method, data, ks, dataset, limit=0, timeout=7200):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--data", data,
           "--dataset", dataset, "--ks", *map(str, ks), "--limit", str(limit)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "wall": time.perf_counter() - t0,
                "load": load}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["load"] = load
    return r


def paper_limit(n: int, requested: int) -> int:
    """Largest N <= requested whose N x N float32 distances + int64 argsort fit in 80 % of free memory."""
    import psutil

    free = psutil.virtual_memory().available * 0.8
    fit = int((free / 12) ** 0.5)
    return min(n, requested, fit)


def fmt_row(name, method, r, metric_keys, rep=""):
    if "error" in r:
        return f"| {name} | {method} | {rep} | {r['load']:.2f} | failed: {r['error']} |" + " |" * (len(metric_keys) + 4)
    vals = [("" if k not in r["metrics"] else f"{100 * r['metrics'][k]:.3f}") for k in metric_keys]
    return (f"| {name} | {method} | {rep} | {r['load']:.2f} | {r['n']:,} | {r['seconds']:.1f} "
            f"| {r.get('cpu_s', float('nan')):.1f} | {r['peak_mb'] / 1024:.2f} "
            f"| {(r['peak_mb'] - r['base_mb']) / 1024:.2f} | " + " | ".join(vals) + " |")


RATIOS = (("ibc_geo", "floor"), ("ibc_geo", "pml"), ("ibc_geo", "search"), ("kmeans", "ibc_geo"),
          ("floor", "search"))


def ratio_lines(name, runs):
    """Median over the repeats of each per-repeat time ratio (runs: one {method: result} per repeat)."""
    out = []
    for a, b in RATIOS:
        per = [r[a]["seconds"] / r[b]["seconds"] for r in runs
               if "seconds" in r.get(a, {}) and "seconds" in r.get(b, {})]
        if per:
            out.append(f"{a} / {b} = {np.median(per):.2f}x (" + ", ".join(f"{v:.2f}" for v in per) + ")")
    return [f"- {name}: time ratios, median of {len(runs)} repeat(s) (each repeat): " + "; ".join(out)] if out else []


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a minute), for trying the script")
    p.add_argument("--out", default="", help="write the markdown table here as well")
    p.add_argument("--paper-n", type=int, default=30000, help="largest N tried for the paper's approach on SOP")
    p.add_argument("--methods", nargs="+", default=["ibc_geo", "kmeans", "search", "floor", "floor_r", "pml",
                                                    "brute", "paper"], choices=sorted(WORKERS))
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=1, help="run the methods this many times, interleaved")
    p.add_argument("--nmi-check", action="store_true", help="NMI of ibc_geo's k-means vs scikit-learn's KMeans")
    p.add_argument("--seeds", type=int, default=10, help="--nmi-check: seeds per data set")
    p.add_argument("--first-seed", type=int, default=0, help="--nmi-check: seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--check-sets", nargs="+", default=None, help="--nmi-check: data sets (default all)")
    p.add_argument("--same-seeds", type=int, default=0,
                   help="--nmi-check: also run this many seeds with scikit-learn's own k-means++ seeds in ours")
    p.add_argument("--other-stream", type=int, default=0,
                   help="--nmi-check: also run scikit-learn with random_state 1000003 + s on this many seeds' data sets")
    p.add_argument("--single-runs", type=int, default=0,
                   help="--nmi-check: also compare this many single runs (n_init=1, redo=1) on the first seed's data")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--ks", nargs="+", type=int, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.data, args.ks, args.dataset, args.limit)
        return

    import faiss

    cmdline = "python benchmarks/eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{cmdline.strip()}`", "", f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, numpy {np.__version__}; "
             f"load average at start {os.getloadavg()[0]:.2f}.", ""]
    if args.nmi_check:
        rows = nmi_check(args.seeds, args.check_sets, args.quick, args.first_seed, args.single_runs,
                         args.same_seeds, args.other_stream)
        text = "\n".join(lines + rows) + "\n"
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    names = args.datasets or [n for n in shapes if n != "SOP/4"]
    metric_keys = ["recall@1", "precision@1", "map@r", "r_precision", "nmi"]
    header = ("| data | method | repeat | load avg | N | time (s) | CPU time (s) | peak RSS (GB) "
              "| peak above data (GB) | " + " | ".join(metric_keys) + " |")
    table = [header, "|" + "---|" * (9 + len(metric_keys))]
    extra = []
    print("\n".join(lines + table), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            n, c, lo, hi, ks = shapes[name]
            x, y = make_dataset(n, c, lo, hi)
            data = os.path.join(tmp, name.replace("/", "_"))
            np.save(data + "_x.npy", x)
            np.save(data + "_y.npy", y)
            del x
            runs = []
            for rep in range(args.repeats):
                results = {}
                for method in args.methods:
                    limit = 0
                    if method == "paper":
                        limit = paper_limit(n, args.paper_n if name.startswith("SOP") else n)
                    if method == "brute" and not name.startswith("SOP") and any(m.startswith("SOP") for m in names):
                        continue  # brute force checks the SOP shapes only (small sets: the tests)
                    r = measure(method, data, ks, name, limit)
                    results[method] = r
                    row = fmt_row(name, method, r, metric_keys, rep + 1)
                    table.append(row)
                    print(row, flush=True)
                    if rep == 0 and "metrics" in r and method in ("ibc_geo", "paper"):
                        rec = ", ".join(f"R@{k} {100 * r['metrics'][f'recall@{k}']:.2f}" for k in ks)
                        extra.append(f"- {name} {method} (N = {r['n']:,}): {rec}")
                    if rep == 0 and "_info" in r.get("metrics", {}):
                        extra.append(f"- {name} {method}: {r['metrics']['_info']}")
                runs.append(results)
                if rep == 0 and "metrics" in results.get("brute", {}) and {"ibc_geo", "pml"} <= results.keys():
                    b = results["brute"]["metrics"]
                    o, q = results["ibc_geo"].get("metrics"), results["pml"].get("metrics")
                    if o and q:
                        diffs = {k: (abs(o[k] - b[k]), abs(q[pk] - b[k])) for k, pk in
                                 (("recall@1", "precision@1"), ("map@r", "map@r"), ("r_precision", "r_precision"))}
                        extra.append(f"- {name}: |ibc_geo - brute|, |pml - brute|: "
                                     + ", ".join(f"{k} {d[0]:.2e}, {d[1]:.2e}" for k, d in diffs.items()))
            extra += ratio_lines(name, runs)
    lines += table + ["", f"Load average at end {os.getloadavg()[0]:.2f}.", ""] + extra
    text = "\n".join(lines) + "\n"
    print("\n".join(extra))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


# --------------------------------------------------------------------------------------------
# NMI of ibc_geo's k-means against scikit-learn's KMeans (issue 11)

NMI_SETS = {  # name: (items, classes, min size, max size, noise, per-class spread of the noise)
    "CUB, hard": (5924, 100, 41, 60, 3.5, 1.0),
    "SOP/10": (6050, 1132, 2, 12, 2.2, 0.0),
    "SOP/4": (15125, 2829, 2, 12, 2.2, 0.0),
}
BEST_OF = (1, 2, 3, 5, 10)


def nmi_check(seeds: int, sets=None, quick: bool = False, first_seed: int = 0, single_runs: int = 0,
              same_seeds: int = 0, other_stream: int = 0) -> list:
    """Per seed s (data and both clusterings seeded by s): scikit-learn's NMI and ours, best of R."""
    from sklearn.cluster import KMeans

    from ibc_geo.evaluation import evaluate_embeddings, iter_kmeans, nmi_score

    out = ["| data | seed | load avg | sklearn NMI | sklearn inertia | sklearn iters | sklearn (s) | "
           + " | ".join(f"ours best of {r}" for r in BEST_OF) + " | ours inertia (10) | ours iters | ours (s) |",
           "|" + "---|" * (10 + len(BEST_OF))]
    summary = []
    print("\n".join(out), flush=True)
    for name in sets or list(NMI_SETS):
        n, c, lo, hi, noise, spread = NMI_SETS[name]
        if quick:
            n, c = n // 4, c // 4
        sk, ours = [], {r: [] for r in BEST_OF}
        for s in range(first_seed, first_seed + seeds):
            x, y = make_dataset(n, c, lo, hi, seed=s, noise=noise, spread=spread)
            if s == first_seed:
                m = evaluate_embeddings(x, y, recall_k=(1,), nmi=False)
                summary.append(f"- {name}: {n:,} items, {c:,} classes, noise {noise} +- {spread}: "
                               f"Recall@1 {100 * m['recall@1']:.1f}, MAP@R {100 * m['map@r']:.1f} (seed {s})")
                print(summary[-1], flush=True)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            km = KMeans(c, n_init=10, random_state=s).fit(x)
            t_sk = time.perf_counter() - t0
            t0 = time.perf_counter()
            runs = list(iter_kmeans(x, c, iters=300, redo=max(BEST_OF), seed=s))
            t_ours = time.perf_counter() - t0
            inertia = np.array([r.inertia for r in runs])
            best = {r: runs[int(np.argmin(inertia[:r]))] for r in BEST_OF}
            sk.append(nmi_score(y, km.labels_))
            for r in BEST_OF:
                ours[r].append(nmi_score(y, best[r].labels))
            row = (f"| {name} | {s} | {load:.2f} | {100 * sk[-1]:.2f} | {km.inertia_:.2f} | {km.n_iter_} "
                   f"| {t_sk:.1f} | " + " | ".join(f"{100 * ours[r][-1]:.2f}" for r in BEST_OF)
                   + f" | {best[max(BEST_OF)].inertia:.2f} | {max(r.n_iter for r in runs)} | {t_ours:.1f} |")
            out.append(row)
            print(row, flush=True)
        sk = np.array(sk)
        if len(sk) >= 2:
            line = (f"- {name}, seeds {first_seed}-{first_seed + seeds - 1}: "
                    f"sklearn KMeans(n_init=10) NMI {100 * sk.mean():.2f} (sd {100 * sk.std(ddof=1):.2f})")
            for r in BEST_OF:
                o = np.array(ours[r])
                d = o - sk
                line += (f"; ours best of {r} {100 * o.mean():.2f}, minus sklearn {100 * d.mean():+.2f} "
                         f"(SE {100 * d.std(ddof=1) / np.sqrt(len(d)):.2f})")
            summary.append(line)
            print(line, flush=True)
        if same_seeds:
            summary += same_seeds_check(name, n, c, lo, hi, noise, spread, first_seed, same_seeds)
            print("\n".join(summary[-2:]), flush=True)
        if single_runs:
            summary.append(single_run_check(name, n, c, lo, hi, noise, spread, first_seed, single_runs))
            print(summary[-1], flush=True)
        if other_stream:
            summary.append(other_stream_check(name, n, c, lo, hi, noise, spread, first_seed, other_stream))
            print(summary[-1], flush=True)
    return out + ["", f"Load average at end {os.getloadavg()[0]:.2f}.", ""] + summary


def same_seeds_check(name, n, c, lo, hi, noise, spread, first_seed, seeds, draws=150) -> list:
    """Everything but the seeding is scikit-learn's: (1) scikit-learn's own 10 k-means++ seedings
    (the RandomState stream of ``KMeans(n_init=10, random_state=s)``) through our Lloyd loop and
    best-of-10 selection give its NMI; (2) our seeding's potential (inertia of the seeds) has
    the distribution of ``sklearn.cluster.kmeans_plusplus``'s (``draws`` draws each)."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    from ibc_geo.evaluation import kmeans_plusplus as our_kmeans_plusplus, nmi_score
    from ibc_geo.evaluation.metrics import _assign, _lloyd

    diffs, pots = [], []
    for s in range(first_seed, first_seed + seeds):
        x, y = make_dataset(n, c, lo, hi, seed=s, noise=noise, spread=spread)
        km = KMeans(c, n_init=10, random_state=s).fit(x)
        xc = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32)
        tol = float(np.var(xc, axis=0, dtype=np.float64).mean()) * 1e-4
        rs, best = np.random.RandomState(s), None
        for _ in range(10):
            init, _ = kmeans_plusplus(xc, c, random_state=rs)
            labels, inertia, _, _ = _lloyd(xc, init.astype(np.float32), 300, tol)
            if best is None or inertia < best[1]:
                best = (labels, inertia)
        diffs.append(nmi_score(y, best[0]) - nmi_score(y, km.labels_))
        ours = [_assign(xc, xc[our_kmeans_plusplus(xc, c, np.random.default_rng([s, i]))])[0].sum(dtype=np.float64)
                for i in range(draws)]
        theirs = [_assign(xc, kmeans_plusplus(xc, c, random_state=1000 * s + i)[0])[0].sum(dtype=np.float64)
                  for i in range(draws)]
        pots.append((np.mean(ours), np.std(ours, ddof=1) / np.sqrt(draws),
                     np.mean(theirs), np.std(theirs, ddof=1) / np.sqrt(draws)))
    d = 100 * np.array(diffs)
    return [f"- {name}, seeds {first_seed}-{first_seed + seeds - 1}, scikit-learn's own seeds in our Lloyd and "
            f"best-of-10: NMI minus scikit-learn's per seed " + ", ".join(f"{v:+.2f}" for v in d),
            f"- {name}, same seeds: potential of {draws} seedings, ours vs scikit-learn's kmeans_plusplus: "
            + "; ".join(f"{a:.2f} (SE {b:.2f}) vs {c_:.2f} (SE {e:.2f})" for a, b, c_, e in pots)]


def other_stream_check(name, n, c, lo, hi, noise, spread, first_seed, seeds, offset=1_000_003) -> str:
    """scikit-learn against itself: ``KMeans(n_init=10)`` with ``random_state`` ``offset + s``
    on the data set of seed s (the one the main check clusters with ``random_state`` s). Its
    NMI minus the main check's scikit-learn column is the gap two random streams of one
    algorithm show on these seeds: the yardstick for ours minus scikit-learn. Prints one line
    per seed (seed, NMI, inertia, seconds) and returns the mean."""
    from sklearn.cluster import KMeans

    from ibc_geo.evaluation import nmi_score

    nmis, inertias = [], []
    for s in range(first_seed, first_seed + seeds):
        x, y = make_dataset(n, c, lo, hi, seed=s, noise=noise, spread=spread)
        t0 = time.perf_counter()
        km = KMeans(c, n_init=10, random_state=offset + s).fit(x)
        nmis.append(nmi_score(y, km.labels_))
        inertias.append(km.inertia_)
        print(f"  {name} seed {s}: other stream NMI {100 * nmis[-1]:.2f}, inertia {km.inertia_:.2f}, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return (f"- {name}, seeds {first_seed}-{first_seed + seeds - 1}, scikit-learn with random_state {offset} + s: "
            f"NMI {100 * np.mean(nmis):.2f} (SE {100 * np.std(nmis, ddof=1) / np.sqrt(seeds):.2f}), "
            f"inertia {np.mean(inertias):.2f}")


def single_run_check(name, n, c, lo, hi, noise, spread, data_seed, runs) -> str:
    """One restart each (sklearn n_init=1 with random_state s, ours redo=1 with seed s) on one data
    set: best-of-10 is the best of 10 independent such runs on both sides, so equal single-run
    distributions (inertia, NMI) mean equal best-of-10 distributions."""
    from sklearn.cluster import KMeans

    from ibc_geo.evaluation import kmeans, nmi_score

    x, y = make_dataset(n, c, lo, hi, seed=data_seed, noise=noise, spread=spread)
    sk, ours = [], []
    for s in range(runs):
        km = KMeans(c, n_init=1, random_state=s).fit(x)
        sk.append((nmi_score(y, km.labels_), km.inertia_))
        r = kmeans(x, c, iters=300, redo=1, seed=s)
        ours.append((nmi_score(y, r.labels), r.inertia))
    sk, ours = np.array(sk), np.array(ours)

    def fmt(a, col, scale):
        return f"{scale * a[:, col].mean():.2f} (SE {scale * a[:, col].std(ddof=1) / np.sqrt(len(a)):.2f})"

    return (f"- {name}, data seed {data_seed}, {runs} single runs each: NMI sklearn {fmt(sk, 0, 100)}, "
            f"ours {fmt(ours, 0, 100)}; inertia sklearn {fmt(sk, 1, 1)}, ours {fmt(ours, 1, 1)}")


if __name__ == "__main__":
    main()

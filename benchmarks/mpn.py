"""Forward + backward time and peak memory of one MPN attention layer: dense vs sparse vs PyG.

One attention layer (d = 512, H = 8, training mode, attention dropout 0.1 as in training) on a
batch graph of B nodes, for the full graph and the kNN graph (k = 10):

* ``dense``: :class:`ibc_geo.nn.IntraBatchAttention` with ``attention_path="dense"`` (SDPA,
  boolean-masked on kNN);
* ``sparse``: the same module with ``attention_path="sparse"`` (edge-wise MessagePassing);
* ``auto``: the same module with ``attention_path="auto"`` (what training uses);
* ``pyg``: PyG's :class:`~torch_geometric.nn.TransformerConv` (out 64 x 8 heads,
  ``root_weight=False``) on the same graph, as an outside reference.

Times come from one child process per (graph, B) that runs the methods round-robin, so that
they share whatever load the machine has; peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
process total including ~0.7 GB of torch + PyG) comes from one fresh child per configuration. A configuration whose estimated
memory exceeds ``--max-gb`` is skipped and marked so in the table. Times are of one forward +
backward (inputs and parameters receive gradients), the best of at least 3 repetitions after two
warm-ups (the minimum is the statistic least disturbed by other load on a shared machine).

    python benchmarks/mpn.py            # full sweep, B in 64 .. 4096
    python benchmarks/mpn.py --quick    # B in 64, 128, 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

D, H, K = 512, 8, 10
METHODS = ("dense", "sparse", "auto", "pyg")
THREADS = int(os.environ.get("IBC_BENCH_THREADS", "0"))  # set by --threads for the children
GRAPHS = ("full", "knn")


def num_edges(graph: str, B: int) -> int:
    return B * B if graph == "full" else B * K


def auto_is_dense(graph: str, B: int) -> bool:
    from ibc_geo.nn import IntraBatchAttention as A

    E = num_edges(graph, B)
    return B <= A.DENSE_MAX_NODES and (E == B * B or E >= A.DENSE_MIN_DENSITY * B * B)


def estimate_gb(method: str, graph: str, B: int) -> float:
    """Rough peak: edge-wise methods hold ~8 (E, d) float tensors, dense ~6 (H, B, B) ones."""
    base = 0.6
    if method in ("sparse", "pyg") or (method == "auto" and not auto_is_dense(graph, B)):
        return base + 8 * num_edges(graph, B) * D * 4 / 1e9
    return base + 6 * H * B * B * 4 / 1e9


def build(method: str, graph: str, B: int, device: str = "cpu"):
    """``(step, used_dense, plan)`` for one layer of ``method`` on ``graph`` with ``B`` nodes on
    ``device``: ``step()`` runs one forward + backward; ``plan()`` re-runs auto's path decision."""
    import torch

    if THREADS:
        torch.set_num_threads(THREADS)
    from torch_geometric.data import Data
    from torch_geometric.nn import TransformerConv

    from ibc_geo.graph import build_topology
    from ibc_geo.nn import IntraBatchAttention

    torch.manual_seed(0)
    x0 = torch.randn(B, D).to(device)
    topo = build_topology("full") if graph == "full" else build_topology("knn", k=K)
    edge_index = topo(Data(x=x0)).edge_index
    if method == "pyg":
        layer = TransformerConv(D, D // H, heads=H, dropout=0.1, root_weight=False)
    else:
        layer = IntraBatchAttention(D, H, dropout=0.1, attention_path=method)
    layer.to(device).train()
    x = x0.clone().requires_grad_(True)

    def step() -> None:
        out = layer(x, edge_index)
        out.square().mean().backward()
        x.grad = None
        layer.zero_grad(set_to_none=True)

    if method == "pyg":
        return step, False, None
    used_dense = bool(layer.dense_plan(edge_index, B)[0])
    return step, used_dense, lambda: layer.dense_plan(edge_index, B)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def child_time(methods: list, graph: str, B: int, min_time: float, device: str = "cpu",
               min_reps: int = 3, max_reps: int = 30, warmup: int = 2) -> dict:
    """Round-robin repetitions of all methods in one process, so they share the same load; on
    CUDA each repetition is timed between two synchronisations."""
    steps = {m: build(m, graph, B, device) for m in methods}
    for step, _, _ in steps.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(warmup):
            step()
    _sync(device)
    times = {m: [] for m in methods}
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_reps or (
            time.perf_counter() - start < min_time * len(methods) and min(len(t) for t in times.values()) < max_reps):
        for m, (step, _, _) in steps.items():
            t = time.perf_counter()
            step()
            _sync(device)
            times[m].append(time.perf_counter() - t)
    result = {m: {"ms": 1e3 * min(times[m]), "reps": len(times[m]), "dense": steps[m][1]} for m in methods}
    if "auto" in steps:  # what auto adds to the path it picks: the O(E) plan, timed alone
        plan = steps["auto"][2]
        plan_times = []
        for _ in range(5):
            t = time.perf_counter()
            plan()
            _sync(device)
            plan_times.append(time.perf_counter() - t)
        result["auto"]["plan_ms"] = 1e3 * min(plan_times)
    return result


def cuda_peak_memory(method: str, graph: str, B: int, device: str = "cuda") -> dict:
    """Peak CUDA memory (``torch.cuda.max_memory_allocated``) of one forward + backward after one
    warm-up step; ``setup_gb`` is what the inputs, graph and parameters hold before it."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step, _, _ = build(method, graph, B, device)
    setup = torch.cuda.memory_allocated(device) - base
    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del step
    torch.cuda.empty_cache()
    return {"peak_gb": peak / 1e9, "setup_gb": setup / 1e9}


def child_memory(method: str, graph: str, B: int) -> dict:
    """Peak RSS of one forward + backward (after one warm-up step) in a fresh process."""
    import resource

    step, _, _ = build(method, graph, B)
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    step()
    step()
    return {"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "setup_gb": setup}


def run_child(args: list) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)] + [str(a) for a in args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_ms(r: dict) -> str:
    if "skipped" in r:
        return f"skipped (~{r['skipped']:.0f} GB)"
    if "error" in r:
        return "error"
    return f"{r['ms']:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="B in 64, 128, 512 only")
    p.add_argument("--sizes", type=int, nargs="*", help="batch sizes (overrides --quick)")
    p.add_argument("--max-gb", type=float, default=12.0,
                   help="skip configurations estimated above this many GB (default: 12)")
    p.add_argument("--min-time", type=float, default=1.5, help="seconds of timed repetitions per configuration")
    p.add_argument("--graphs", nargs="*", default=list(GRAPHS), choices=GRAPHS, help="graphs to run (default: both)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in the children (default: 0 = torch's default); 1 avoids OpenMP "
                        "barrier stalls when other jobs load the machine")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--child-time", nargs=3, metavar=("METHODS", "GRAPH", "B"), help=argparse.SUPPRESS)
    p.add_argument("--child-memory", nargs=3, metavar=("METHOD", "GRAPH", "B"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.threads:
        os.environ["IBC_BENCH_THREADS"] = str(args.threads)
    if args.child_time:
        methods, graph, B = args.child_time
        print(json.dumps(child_time(methods.split(","), graph, int(B), args.min_time)))
        return
    if args.child_memory:
        method, graph, B = args.child_memory
        print(json.dumps(child_memory(method, graph, int(B))))
        return

    sizes = args.sizes or ([64, 128, 512] if args.quick else [64, 128, 512, 1024, 2048, 4096])
    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"# torch {torch.__version__}, {threads} thread(s) on {os.cpu_count()} cores, d={D}, H={H}, kNN k={K}, "
          f"train mode, attention dropout 0.1; forward+backward best-of ms; peak RSS GB of the child")
    results = {}
    for graph in args.graphs:
        for B in sizes:
            est = {m: estimate_gb(m, graph, B) for m in METHODS}
            run = [m for m in METHODS if est[m] <= args.max_gb]
            timed = run_child(["--child-time", ",".join(run), graph, B, "--min-time", args.min_time]) if run else {}
            for method in METHODS:
                if method not in run:
                    r = {"skipped": est[method]}
                elif "error" in timed:
                    r = dict(timed)
                else:
                    r = dict(timed[method])
                    r.update(run_child(["--child-memory", method, graph, B]))
                results[f"{graph}/{B}/{method}"] = r
                print(f"  {graph:4s} B={B:5d} {method:6s} {json.dumps(r)}", file=sys.stderr, flush=True)

    print()
    print("| graph | B | E | dense ms | sparse ms | PyG TransformerConv ms | auto ms (path) "
          "| sparse / dense | PyG / dense | auto / best | auto picks faster? | plan / best | peak GB dense | peak GB sparse | peak GB PyG | peak GB auto |")
    print("|" + "---|" * 16)
    for graph in args.graphs:
        for B in sizes:
            r = {m: results[f"{graph}/{B}/{m}"] for m in METHODS}
            ok = {m: v["ms"] for m, v in r.items() if "ms" in v}

            def ratio(a: str, b: str) -> str:
                return f"{ok[a] / ok[b]:.1f}x" if a in ok and b in ok else "-"

            best = min((ok[m] for m in ("dense", "sparse") if m in ok), default=None)
            auto_best = f"{ok['auto'] / best:.2f}" if "auto" in ok and best else "-"
            path = ("dense" if r["auto"].get("dense") else "sparse") if "ms" in r["auto"] else ""
            faster = min((m for m in ("dense", "sparse") if m in ok), key=ok.get, default=None)
            if path and faster and "dense" in ok and "sparse" in ok:
                close = abs(ok["dense"] - ok["sparse"]) / best < 0.10
                picks = "yes" if path == faster else ("tie (<10%)" if close else "NO")
            elif path and faster:
                picks = f"only {faster} ran"
            else:
                picks = "-"
            plan = f"{r['auto']['plan_ms'] / best:.3f}" if "plan_ms" in r["auto"] and best else "-"
            peak = [f"{v['peak_gb']:.2f}" if "peak_gb" in v else "-" for v in (r[m] for m in ("dense", "sparse", "pyg", "auto"))]
            print(f"| {graph} | {B} | {num_edges(graph, B)} | {fmt_ms(r['dense'])} | {fmt_ms(r['sparse'])} | "
                  f"{fmt_ms(r['pyg'])} | {fmt_ms(r['auto'])} ({path}) | {ratio('sparse', 'dense')} | "
                  f"{ratio('pyg', 'dense')} | {auto_best} | {picks} | {plan} | " + " | ".join(peak) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

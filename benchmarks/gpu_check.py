"""The prepared GPU check: in one run, what only a GPU can show (see benchmarks/README.md).

Sections, each under its own time budget (a soft one, checked between configurations, and a hard
one, ``SIGALRM``, a few seconds later); a failing or overrunning section is recorded and the
others still run; the results are rewritten after every section:

* ``env``: versions, the GPU, TF32 flags, ``nvidia-smi``, one bf16 matrix product (TFLOP/s).
* ``tests``: ``pytest -m cuda tests/gpu/test_cuda.py`` in a child process (its log beside the results).
* ``train``: training images/s for the four paper batch shapes (``train_step.SHAPES``) with AMP
  bfloat16 and in float32, ``channels_last`` on and off, the backbone-only step on the same batch
  (graph + MPN share of the step), graph + MPN alone, ``cudnn.benchmark``, peak GPU memory.
* ``attention``: one ``IntraBatchAttention`` layer, dense vs sparse vs auto, full and kNN graphs,
  forward + backward ms and peak GPU memory (``mpn.child_time``, ``mpn.cuda_peak_memory``).
* ``extract``: embedding extraction images/s (``ibc_geo.evaluation.extract_embeddings``), bf16 and fp32.
* ``pipeline``: the training (and test) input pipeline's images/s on generated JPEGs of realistic
  size (decode + RandomResizedCrop + flip + normalise + random erasing, ``build_train_loader``)
  with all CPU cores and in one process, against the GPU's images/s: which one limits a step.

Writes ``gpu_check.json`` and ``gpu_check.md`` (and ``pytest_cuda.log``) under ``--out``
(default ``$OUT``, else ``output/gpu_check``).

    bash benchmarks/gpu_check.sh                   # the GPU machine: about 5 minutes on an H200
    bash benchmarks/gpu_check.sh --dry-run         # CPU, small sizes, the same code path (tests, CI)
    python benchmarks/gpu_check.py --dry-run --device cuda   # small sizes on a GPU: a quick smoke run
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # train_step, mpn

# Sizes of a real run (GPU) and of the dry run (CPU, seconds). Budgets are seconds per section.
PROFILES = {
    "full": dict(
        backbone="resnet50", image_size=227, warmup=3, steps=5, min_time=1.0,
        shapes=None, later_shapes=None,  # every batch shape in every row kind
        attn_sizes=(512, 4096), attn_min_time=0.5, attn_reps=3, attn_warmup=2,
        extract_batch=128, extract_batches=48,
        jpeg_size=(500, 375), jpeg_distinct=256, pipe_classes=240, pipe_per_class=20, pipe_shape=(6, 9),
        pipe_single_batches=3, pipe_row_s=6.0, matmul_n=8192,
        budgets=dict(env=10, tests=100, train=110, attention=40, extract=20, pipeline=40),
    ),
    "dry": dict(
        backbone="resnet18", image_size=32, warmup=0, steps=1, min_time=0.0,
        # CUB and Cars (one and two MPN layers, concat_layers); NCHW and cudnn.benchmark rows: CUB only
        shapes=("cub", "cars"), later_shapes=("cub",),
        attn_sizes=(64, 128), attn_min_time=0.0, attn_reps=1, attn_warmup=1,
        extract_batch=16, extract_batches=2,
        jpeg_size=(100, 75), jpeg_distinct=8, pipe_classes=12, pipe_per_class=8, pipe_shape=(3, 4),
        pipe_single_batches=2, pipe_row_s=2.0, matmul_n=256,
        budgets=dict(env=10, tests=60, train=60, attention=30, extract=20, pipeline=30),
    ),
}
SECTIONS = ("env", "tests", "train", "attention", "extract", "pipeline")
HARD_GRACE_S = 10.0  # the hard limit of a section is its budget plus this


# ------------------------------------------------------------------------------ section runner
class SectionTimeout(BaseException):
    """A section ran past its hard limit (budget + grace); a BaseException, so that the per-row
    ``except Exception`` of a section does not swallow it."""


class Budget:
    """A section's soft time budget: loops ask ``left()`` / ``allows(seconds)`` between configurations."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def run_section(name: str, fn: Callable[["Budget", dict], None], budget_s: float,
                grace_s: Optional[float] = None) -> dict:
    """Run ``fn(budget, record)``; ``fn`` fills ``record`` as it goes, so that what it measured
    before a failure or a hard timeout is kept. Returns the record with ``status`` (``ok``,
    ``partial`` when ``fn`` set ``record["skipped"]``, ``failed`` when ``fn`` set it so,
    ``error``, ``timeout``), ``seconds`` and ``budget_s``."""
    record: dict = {"status": None, "budget_s": budget_s}
    budget = Budget(budget_s)
    hard = budget_s + (HARD_GRACE_S if grace_s is None else grace_s)
    use_alarm = hasattr(signal, "setitimer")

    def on_alarm(signum, frame):
        raise SectionTimeout(f"section {name!r} ran past its hard limit of {hard:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, hard)
    print(f"== {name} (budget {budget_s:.0f} s)", flush=True)
    try:
        fn(budget, record)
        if record["status"] is None:
            record["status"] = "partial" if record.get("skipped") else "ok"
    except SectionTimeout as e:
        record.update(status="timeout", error=str(e))
    except Exception as e:  # noqa: BLE001 - any failure is recorded; the next section still runs
        record.update(status="error", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc().splitlines()[-12:])
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    record["seconds"] = round(budget.elapsed(), 2)
    print(f"== {name}: {record['status']} in {record['seconds']:.1f} s"
          + (f" ({record['error']})" if record.get("error") else ""), flush=True)
    return record


def run_all(sections: List[Tuple[str, Callable, float]], results: dict, write: Callable[[dict], None]) -> dict:
    """Every section in order, ``write(results)`` after each one."""
    for name, fn, budget_s in sections:
        results["sections"][name] = run_section(name, fn, budget_s)
        write(results)
    return results


# -------------------------------------------------------------------------------------- helpers
def _torch():
    import torch

    return torch


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def free_memory(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        _torch().cuda.empty_cache()


def reset_peak(device: str) -> None:
    if is_cuda(device):
        torch = _torch()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> Optional[float]:
    if not is_cuda(device):
        return None
    torch = _torch()
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 1e9, 3)


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 300 else text[:300] + "..."


def _dtype(name: Optional[str]):
    return None if name in (None, "fp32", "float32") else getattr(_torch(), {"bf16": "bfloat16"}.get(name, name))


# ------------------------------------------------------------------------------------- sections
def section_env(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        torch = _torch()
        info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
                "torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": ctx["device"],
                "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()}
        for mod in ("torchvision", "torch_geometric", "torch_scatter", "faiss", "omegaconf", "numpy", "PIL",
                    "sklearn", "ibc_geo"):
            try:
                m = __import__(mod)
                info[mod] = getattr(m, "__version__", "installed")
                if mod == "ibc_geo":
                    info["ibc_geo_path"] = os.path.dirname(m.__file__)
            except Exception as e:  # noqa: BLE001
                info[mod] = f"missing ({short_error(e)})"
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 1e9, 1),
                        capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                        cudnn=torch.backends.cudnn.version(),
                        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                        cudnn_benchmark=torch.backends.cudnn.benchmark)
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                      "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
                info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
            except Exception as e:  # noqa: BLE001
                info["nvidia_smi"] = f"unavailable ({short_error(e)})"
        rec["info"] = info
        # One bf16 matrix product: the ceiling the training figures are read against.
        device, n = ctx["device"], ctx["p"]["matmul_n"]
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        from train_step import timed

        sec = timed(lambda: a @ b, 3, device, warmup=2, min_time=0.2 if is_cuda(device) else 0.0, max_steps=50)
        rec["matmul_bf16"] = {"n": n, "ms": round(1e3 * sec, 3), "tflops": round(2 * n**3 / sec / 1e12, 2)}
        missing = [m for m in ("faiss", "omegaconf", "ibc_geo") if str(info[m]).startswith("missing")]
        if missing:
            rec["status"] = "failed"
            rec["error"] = f"missing packages: {', '.join(missing)} (install the wheels: benchmarks/README.md)"

    return run


def section_tests(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        import shutil

        log = os.path.join(ctx["out"], "pytest_cuda.log")
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-m", "cuda", "tests/gpu/test_cuda.py"]
        rec["command"] = " ".join(cmd[1:])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        basetemp = tempfile.mkdtemp(prefix="ibc_gpu_check_pytest_")  # its own, removed afterwards
        with open(log, "w") as f:
            try:
                res = subprocess.run(cmd + ["--basetemp", os.path.join(basetemp, "t")], cwd=ROOT, stdout=f,
                                     stderr=subprocess.STDOUT, env=env, timeout=max(budget.left(), 5))
                rec["returncode"] = res.returncode
            except subprocess.TimeoutExpired:
                rec["returncode"] = None
                rec["status"] = "timeout"
                rec["error"] = f"pytest ran past the section budget ({budget.seconds:.0f} s)"
            finally:
                shutil.rmtree(basetemp, ignore_errors=True)
        with open(log) as f:
            text = f.read()
        rec["tail"] = text.strip().splitlines()[-25:]
        counts = {}
        for line in reversed(text.strip().splitlines()):
            found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
            if found:
                counts = {k.rstrip("s") if k.startswith("error") else k: int(v) for v, k in found}
                break
        rec["counts"] = counts
        failed = counts.get("failed", 0) + counts.get("error", 0)
        if rec["status"] is None and (rec["returncode"] != 0 or failed):
            rec["status"] = "failed"
            rec["error"] = f"pytest exit code {rec['returncode']}: {counts}"
        if counts.get("skipped") and not counts.get("passed"):
            rec["note"] = "every CUDA test was skipped (no GPU here)"

    return run


def section_train(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        torch = _torch()
        from train_step import SHAPES, build, time_graph_mpn, time_steps

        p, device = ctx["p"], ctx["device"]
        rows = rec.setdefault("rows", [])
        rec["conditions"] = (f"{p['backbone']} at {p['image_size']} px, random init, full graph, RAdam; "
                             f"{p['warmup']} warm-up steps, timed steps filling >= {p['min_time']} s")
        # In priority order, so that a short budget drops the least important rows:
        # (memory format, cudnn.benchmark, [(precision, kind), ...]).
        plan = [("channels_last", False, [("bf16", "full"), ("bf16", "backbone"), ("bf16", "graph_mpn"),
                                          ("fp32", "full"), ("fp32", "backbone"), ("fp32", "graph_mpn")]),
                ("nchw", False, [("bf16", "full"), ("fp32", "full")]),
                ("channels_last", True, [("bf16", "full")])]
        last = 0.0
        for phase, (layout, bench, variants) in enumerate(plan):
            for name in SHAPES:
                if (p["shapes"] and name not in p["shapes"]) or (
                        phase and p["later_shapes"] and name not in p["later_shapes"]):
                    continue
                P, K = SHAPES[name][:2]
                if not budget.allows(1.5 * last):
                    rec.setdefault("skipped", []).append(f"{name} {layout}{' cudnn.benchmark' if bench else ''}")
                    continue
                old_bench = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = bench
                try:
                    free_memory(device)
                    torch.manual_seed(0)
                    model, loss, opt, images, labels = build(name, p["backbone"], p["image_size"], "full", device,
                                                             channels_last=layout == "channels_last")
                    for precision, kind in variants:
                        start = time.perf_counter()
                        row = {"dataset": name, "P": P, "K": K, "batch": P * K, "precision": precision,
                               "memory_format": layout, "cudnn_benchmark": bench, "kind": kind}
                        try:
                            reset_peak(device)
                            common = dict(steps=p["steps"], device=device, amp_dtype=_dtype(precision),
                                          warmup=p["warmup"], min_time=p["min_time"])
                            if kind == "graph_mpn":
                                sec = time_graph_mpn(model, loss, images, labels, **common)
                            else:
                                sec = time_steps(model, loss, opt, images, labels,
                                                 backbone_only=kind == "backbone", **common)
                            row.update(step_ms=round(1e3 * sec, 3), images_per_s=round(P * K / sec, 1),
                                       peak_gb=peak_gb(device))
                        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the next row runs
                            row["error"] = short_error(e)
                            free_memory(device)
                        rows.append(row)
                        last = max(last, time.perf_counter() - start)
                        print("  train", json.dumps(row), flush=True)
                    del model, loss, opt, images, labels
                finally:
                    torch.backends.cudnn.benchmark = old_bench
                    free_memory(device)

    return run


def section_attention(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        torch = _torch()
        import mpn

        p, device = ctx["p"], ctx["device"]
        methods = ["dense", "sparse", "auto"]
        if is_cuda(device):
            max_gb = 0.8 * torch.cuda.get_device_properties(0).total_memory / 1e9
        else:
            max_gb = 4.0
        rec["conditions"] = (f"one IntraBatchAttention layer, d = {mpn.D}, H = {mpn.H}, kNN k = {mpn.K}, training "
                             f"mode (attention dropout 0.1), forward + backward, best of >= {p['attn_reps']} "
                             f"round-robin repetitions; configurations estimated above {max_gb:.0f} GB skipped")
        rows = rec.setdefault("rows", [])
        last = 0.0
        for graph in ("full", "knn"):
            for B in p["attn_sizes"]:
                if not budget.allows(1.5 * last):
                    rec.setdefault("skipped", []).append(f"{graph} B={B}")
                    continue
                start = time.perf_counter()
                est = {m: mpn.estimate_gb(m, graph, B) for m in methods}
                fits = [m for m in methods if est[m] <= max_gb]
                results = {m: {"skipped_gb": round(est[m], 1)} for m in methods if m not in fits}
                free_memory(device)
                try:
                    timed = mpn.child_time(fits, graph, B, p["attn_min_time"], device=device,
                                           min_reps=p["attn_reps"], warmup=p["attn_warmup"]) if fits else {}
                    for m in fits:
                        results[m] = dict(timed[m])
                        if is_cuda(device):
                            try:
                                results[m].update(mpn.cuda_peak_memory(m, graph, B, device))
                            except Exception as e:  # noqa: BLE001
                                results[m]["memory_error"] = short_error(e)
                except Exception as e:  # noqa: BLE001
                    for m in fits:
                        results[m] = {"error": short_error(e)}
                free_memory(device)
                for m in methods:
                    row = {"graph": graph, "B": B, "E": mpn.num_edges(graph, B), "method": m, **results[m]}
                    rows.append(row)
                    print("  attention", json.dumps(row), flush=True)
                last = max(last, time.perf_counter() - start)

    return run


class RepeatedBatches:
    """A loader of ``n`` batches that are one pinned image batch again and again (new indices each)."""

    def __init__(self, images, n: int):
        self.images, self.n = images, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        torch = _torch()
        bs = len(self.images)
        for i in range(self.n):
            yield self.images, torch.zeros(bs, dtype=torch.long), torch.arange(i * bs, (i + 1) * bs)


def section_extract(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        torch = _torch()
        from ibc_geo.config import load_config
        from ibc_geo.evaluation import extract_embeddings
        from ibc_geo.modeling import IntraBatchModel
        from train_step import sync

        p, device = ctx["p"], ctx["device"]
        bs, n = p["extract_batch"], p["extract_batches"]
        rec["conditions"] = (f"{p['backbone']} at {p['image_size']} px, batches of {bs} (pinned CPU tensors, "
                             f"copied to the device and back as evaluation does), {bs * n} images a run")
        cfg = load_config("configs/cub.yaml", ["model.backbone", p["backbone"], "model.pretrained", "none",
                                               "data.image_size", str(p["image_size"])])
        torch.manual_seed(0)
        model = IntraBatchModel.from_config(cfg, 100).to(device)
        images = torch.randn(bs, 3, p["image_size"], p["image_size"])
        if is_cuda(device):
            images = images.pin_memory()
        rows = rec.setdefault("rows", [])
        for precision in ("bf16", "fp32"):
            if rows and not budget.allows(1.5 * max(r.get("seconds", 0) for r in rows)):
                rec.setdefault("skipped", []).append(precision)
                continue
            row = {"precision": precision, "batch": bs, "images": bs * n}
            try:
                extract_embeddings(model, RepeatedBatches(images, 2), device, amp_dtype=_dtype(precision))
                reset_peak(device)
                sync(device)
                start = time.perf_counter()
                emb, _ = extract_embeddings(model, RepeatedBatches(images, n), device, amp_dtype=_dtype(precision))
                sec = time.perf_counter() - start
                row.update(seconds=round(sec, 3), images_per_s=round(bs * n / sec, 1), peak_gb=peak_gb(device),
                           embedding_shape=list(emb.shape))
            except Exception as e:  # noqa: BLE001
                row["error"] = short_error(e)
            rows.append(row)
            print("  extract", json.dumps(row), flush=True)
        del model
        free_memory(device)

    return run


def make_jpegs(folder: str, count: int, size: Tuple[int, int], seed: int = 0) -> List[str]:
    """``count`` distinct JPEGs (quality 85) of ``size`` (width, height): smooth random colour fields
    with fine noise, so that they compress and decode like photographs, not like flat colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i:04d}.jpg")
        Image.fromarray(img).save(path, quality=85)
        paths.append(path)
    return paths


def link_class_folders(root: str, split: str, sources: List[str], classes: int, per_class: int) -> None:
    """``root/split/<split><i>/<j>.jpg``: ``classes`` x ``per_class`` hard links to ``sources`` in turn."""
    n = 0
    for c in range(classes):
        d = os.path.join(root, split, f"{split}{c:04d}")
        os.makedirs(d, exist_ok=True)
        for j in range(per_class):
            src, dst = sources[n % len(sources)], os.path.join(d, f"{j:03d}.jpg")
            try:
                os.link(src, dst)
            except OSError:
                os.symlink(src, dst)
            n += 1


def time_loader(loader, warm: int, max_batches: int, budget: Budget, max_seconds: float,
                reserve: float = 2.0) -> dict:
    """Images/s of ``loader`` after ``warm`` batches (the workers' start and their prefetched batches),
    over at most ``max_batches`` more or ``max_seconds``, or until the budget (less ``reserve``
    seconds) runs out."""
    it = iter(loader)
    try:
        for _ in range(warm):
            next(it)
        count, batches = 0, 0
        start = time.perf_counter()
        for batch in it:
            count += len(batch[0])
            batches += 1
            if batches >= max_batches or time.perf_counter() - start >= max_seconds or not budget.allows(reserve):
                break
        sec = time.perf_counter() - start
    finally:
        del it
    if batches == 0:
        raise RuntimeError(f"the loader yielded no batch after {warm} warm-up batches")
    return {"batches": batches, "images": count, "seconds": round(sec, 3), "images_per_s": round(count / sec, 1)}


def section_pipeline(ctx: dict) -> Callable:
    def run(budget: Budget, rec: dict) -> None:
        import shutil

        from ibc_geo.config import load_config
        from ibc_geo.data import build_dataset, build_eval_loader, build_train_loader, build_transforms

        p = ctx["p"]
        P, K = p["pipe_shape"]
        tmp = tempfile.mkdtemp(prefix="ibc_gpu_check_")
        try:
            t = time.perf_counter()
            sources = make_jpegs(os.path.join(tmp, "sources"), p["jpeg_distinct"], p["jpeg_size"])
            root = os.path.join(tmp, "data")
            link_class_folders(root, "train", sources, p["pipe_classes"], p["pipe_per_class"])
            link_class_folders(root, "test", sources, p["pipe_classes"], p["pipe_per_class"])
            sizes = [os.path.getsize(s) for s in sources]
            rec["jpegs"] = {"distinct": len(sources), "width": p["jpeg_size"][0], "height": p["jpeg_size"][1],
                            "mean_kb": round(sum(sizes) / len(sizes) / 1e3, 1), "make_s": round(time.perf_counter() - t, 2)}
            rec["conditions"] = (f"{len(sources)} distinct {p['jpeg_size'][0]}x{p['jpeg_size'][1]} JPEGs "
                                 f"({rec['jpegs']['mean_kb']} kB mean, page cache warm), imagefolder layout, "
                                 f"{P}x{K} PK batches at {p['image_size']} px, the default training augmentation "
                                 f"(RandomResizedCrop, flip, normalise, random erasing 0.5)")
            cores = os.cpu_count() or 1
            rows = rec.setdefault("rows", [])
            for split, workers in (("train", cores), ("train", 0), ("test", cores)):
                if rows and not budget.allows(4.0):
                    rec.setdefault("skipped", []).append(f"{split} workers={workers}")
                    continue
                cfg = load_config(None, [
                    "data.name", "imagefolder", "data.root", root, "data.val_classes", "0", "eval.selection", "test",
                    "data.workers", str(workers), "data.image_size", str(p["image_size"]),
                    "sampler.classes_per_batch", str(P), "sampler.samples_per_class", str(K),
                    "eval.batch_size", str(P * K)])
                row = {"split": split, "workers": workers, "batch": P * K}
                try:
                    dataset = build_dataset(cfg, split, build_transforms(cfg, train=split == "train"))
                    if split == "train":
                        loader, sampler = build_train_loader(cfg, dataset)
                        length = len(sampler)
                    else:
                        loader = build_eval_loader(cfg, dataset)
                        length = len(loader)
                    warm = 2 * workers + 1 if workers else 1
                    most = length - warm if workers else p["pipe_single_batches"]
                    row.update(time_loader(loader, warm, max(most, 1), budget, p["pipe_row_s"]))
                    del loader
                except Exception as e:  # noqa: BLE001
                    row["error"] = short_error(e)
                gc.collect()
                rows.append(row)
                print("  pipeline", json.dumps(row), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return run


BUILDERS = {"env": section_env, "tests": section_tests, "train": section_train, "attention": section_attention,
            "extract": section_extract, "pipeline": section_pipeline}


# ------------------------------------------------------------------------------------- reports
def _rows(results: dict, section: str) -> list:
    return results["sections"].get(section, {}).get("rows", [])


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def summarize(results: dict) -> dict:
    """Ratios from one run: per batch shape, bf16 vs fp32, NCHW vs channels_last, the graph + MPN
    share of the step, cudnn.benchmark, and the input pipeline against the GPU."""
    train = [r for r in _rows(results, "train") if "step_ms" in r]

    def get(name, precision, layout="channels_last", kind="full", bench=False):
        for r in train:
            if (r["dataset"], r["precision"], r["memory_format"], r["kind"], r["cudnn_benchmark"]) == (
                    name, precision, layout, kind, bench):
                return r
        return None

    def ratio(a, b):
        return round(a["step_ms"] / b["step_ms"], 3) if a and b else None

    pipe = {(r["split"], r["workers"]): r for r in _rows(results, "pipeline") if "images_per_s" in r}
    cores = max((w for (s, w) in pipe if s == "train"), default=None)
    loader_ips = pipe[("train", cores)]["images_per_s"] if cores else None
    shapes = {}
    for name in dict.fromkeys(r["dataset"] for r in train):
        row = {}
        for prec in ("bf16", "fp32"):
            full, bb, gm = get(name, prec), get(name, prec, kind="backbone"), get(name, prec, kind="graph_mpn")
            row[f"{prec}_images_per_s"] = full["images_per_s"] if full else None
            row[f"{prec}_peak_gb"] = full["peak_gb"] if full else None
            row[f"{prec}_nchw_over_cl"] = ratio(get(name, prec, "nchw"), full)
            row[f"{prec}_graph_mpn_share"] = round(1 - bb["step_ms"] / full["step_ms"], 4) if full and bb else None
            row[f"{prec}_graph_mpn_alone_share"] = round(gm["step_ms"] / full["step_ms"], 4) if full and gm else None
        row["fp32_over_bf16"] = ratio(get(name, "fp32"), get(name, "bf16"))
        row["cudnn_benchmark_over_default"] = ratio(get(name, "bf16", bench=True), get(name, "bf16"))
        gpu = row["bf16_images_per_s"]
        if gpu and loader_ips:
            row["loader_over_gpu"] = round(loader_ips / gpu, 3)
            row["bound_by"] = "GPU" if loader_ips >= gpu else "data loading"
        shapes[name] = row
    return {"shapes": shapes, "loader_images_per_s": loader_ips, "loader_workers": cores}


def markdown(results: dict) -> str:
    meta, sec = results["meta"], results["sections"]
    info = sec.get("env", {}).get("info", {})
    machine = info.get("gpu") or "no GPU"
    lines = []
    title = "GPU check" if meta["mode"] == "full" else "GPU check, DRY RUN (small sizes; not GPU figures)"
    lines += [f"# {title}", "",
              f"Date (UTC): {meta['started']}. Machine: {machine}"
              + (f", {info.get('gpu_memory_gb')} GB, compute capability {info.get('capability')}" if info.get("gpu") else "")
              + f"; {info.get('cpu_count', '?')} CPU cores. torch {info.get('torch', '?')} (CUDA {info.get('torch_cuda')}),"
              f" torchvision {info.get('torchvision', '?')}, PyG {info.get('torch_geometric', '?')},"
              f" cuDNN {info.get('cudnn', '-')}, Python {info.get('python', '?')}.",
              f"Command: `{meta['command']}` (device {meta['device']}, {meta['total_s']} s in all). "
              "Copy this file to `benchmarks/RESULTS_gpu.md`.", ""]
    if info.get("nvidia_smi"):
        lines += [f"nvidia-smi: {info['nvidia_smi']}. TF32: cuDNN {info.get('cudnn_allow_tf32')}, "
                  f"matmul {info.get('matmul_allow_tf32')}; cudnn.benchmark default {info.get('cudnn_benchmark')}.", ""]
    mm = sec.get("env", {}).get("matmul_bf16")
    if mm:
        lines += [f"bf16 matrix product {mm['n']}^3: {mm['tflops']} TFLOP/s ({mm['ms']} ms).", ""]
    lines += ["| section | status | seconds (budget) | note |", "| --- | --- | --- | --- |"]
    for name, r in sec.items():
        note = r.get("error") or r.get("note") or ""
        if r.get("skipped"):
            note += f" skipped for the budget: {', '.join(r['skipped'])}"
        if name == "tests" and r.get("counts"):
            note = f"{r['counts']} " + note
        lines.append(f"| {name} | {r['status']} | {r.get('seconds')} ({r.get('budget_s')}) | {note.strip()} |")
    lines.append("")

    s = results.get("summary", {})
    if s.get("shapes"):
        lines += ["## Training step", "", sec["train"].get("conditions", ""), "",
                  "| dataset | P x K | bf16 images/s | fp32 images/s | fp32 / bf16 step | NCHW / channels_last step "
                  "(bf16, fp32) | graph + MPN share of the step (bf16, fp32) | graph + MPN alone / step (bf16) "
                  "| cudnn.benchmark / default step (bf16) | peak GB (bf16, fp32) | loader / GPU images/s | bound by |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        rows = {r["dataset"]: r for r in _rows(results, "train")}
        for name, r in s["shapes"].items():
            pct = lambda v: _fmt(None if v is None else 100 * v, ".1f") + ("%" if v is not None else "")  # noqa: E731
            lines.append(
                f"| {name} | {rows[name]['P']} x {rows[name]['K']} | {_fmt(r['bf16_images_per_s'])} | "
                f"{_fmt(r['fp32_images_per_s'])} | {_fmt(r['fp32_over_bf16'], '.2f')} | "
                f"{_fmt(r['bf16_nchw_over_cl'], '.2f')}, {_fmt(r['fp32_nchw_over_cl'], '.2f')} | "
                f"{pct(r['bf16_graph_mpn_share'])}, {pct(r['fp32_graph_mpn_share'])} | "
                f"{pct(r['bf16_graph_mpn_alone_share'])} | {_fmt(r['cudnn_benchmark_over_default'], '.2f')} | "
                f"{_fmt(r['bf16_peak_gb'], '.2f')}, {_fmt(r['fp32_peak_gb'], '.2f')} | "
                f"{_fmt(r.get('loader_over_gpu'), '.2f')} | {r.get('bound_by', '-')} |")
        lines += ["", "Graph + MPN share = 1 - backbone-only step / full step (same batch, same precision). "
                  f"Loader = the training input pipeline with {s.get('loader_workers')} workers "
                  f"({_fmt(s.get('loader_images_per_s'))} images/s).", ""]
        lines += ["<details><summary>every training row</summary>", "",
                  "| dataset | precision | memory format | cudnn.benchmark | step | ms | images/s | peak GB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in _rows(results, "train"):
            lines.append(f"| {r['dataset']} | {r['precision']} | {r['memory_format']} | {r['cudnn_benchmark']} | "
                         f"{r['kind']} | {_fmt(r.get('step_ms'), '.2f')} | {_fmt(r.get('images_per_s'))} | "
                         f"{_fmt(r.get('peak_gb'), '.2f')} |" + (f" {r['error']}" if "error" in r else ""))
        lines += ["", "</details>", ""]

    att = _rows(results, "attention")
    if att:
        lines += ["## Attention layer", "", sec["attention"].get("conditions", ""), "",
                  "| graph | B | E | dense ms | sparse ms | auto ms (path) | sparse / dense | peak GB dense | peak GB sparse | peak GB auto |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        by = {}
        for r in att:
            by.setdefault((r["graph"], r["B"], r["E"]), {})[r["method"]] = r
        for (graph, B, E), m in by.items():
            def ms(r):
                if "ms" in r:
                    return f"{r['ms']:.2f}"
                if "skipped_gb" in r:
                    return f"needs ~{r['skipped_gb']:.0f} GB"
                return "error"
            auto = m.get("auto", {})
            path = ("dense" if auto.get("dense") else "sparse") if "ms" in auto else ""
            sd = (f"{m['sparse']['ms'] / m['dense']['ms']:.1f}x"
                  if "ms" in m.get("sparse", {}) and "ms" in m.get("dense", {}) else "-")
            lines.append(f"| {graph} | {B} | {E} | {ms(m['dense'])} | {ms(m['sparse'])} | {ms(auto)} ({path}) | {sd} | "
                         + " | ".join(_fmt(m[k].get("peak_gb"), ".3f") for k in ("dense", "sparse", "auto")) + " |")
        lines.append("")

    ext = _rows(results, "extract")
    if ext:
        lines += ["## Embedding extraction", "", sec["extract"].get("conditions", ""), "",
                  "| precision | images/s | peak GB |", "| --- | --- | --- |"]
        for r in ext:
            lines.append(f"| {r['precision']} | {_fmt(r.get('images_per_s'))} | {_fmt(r.get('peak_gb'), '.2f')} |"
                         + (f" {r['error']}" if "error" in r else ""))
        lines.append("")

    pipe = _rows(results, "pipeline")
    if pipe:
        lines += ["## Input pipeline (CPU)", "", sec["pipeline"].get("conditions", ""), "",
                  "| split | workers | images/s | images timed | seconds |", "| --- | --- | --- | --- | --- |"]
        for r in pipe:
            lines.append(f"| {r['split']} | {r['workers']} | {_fmt(r.get('images_per_s'))} | {r.get('images', '-')} | "
                         f"{r.get('seconds', '-')} |" + (f" {r['error']}" if "error" in r else ""))
        lines.append("")

    tests = sec.get("tests", {})
    if tests.get("tail"):
        lines += ["## CUDA tests", "", f"`{tests.get('command')}`", "", "```"] + tests["tail"] + ["```", ""]
    return "\n".join(lines)


def write_results(results: dict, out: str) -> None:
    results["summary"] = summarize(results)
    results["meta"]["total_s"] = round(time.perf_counter() - results["meta"]["_t0"], 1)
    for name, text in (("gpu_check.json", json.dumps({**results, "meta": {k: v for k, v in results["meta"].items()
                                                                            if not k.startswith("_")}}, indent=1)),
                       ("gpu_check.md", markdown(results))):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(out, name))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="small sizes on the CPU (or --device), seconds")
    ap.add_argument("--device", help="cuda (default) or cpu (the default of --dry-run)")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "output", "gpu_check"),
                    help="results folder (default: $OUT, else output/gpu_check)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's budget")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 1 in a dry run on CPU, "
                                                           "else torch's default)")
    args = ap.parse_args(argv)
    mode = "dry" if args.dry_run else "full"
    device = args.device or ("cpu" if args.dry_run else "cuda")
    os.chdir(ROOT)  # configs/ and tests/ are read relative to the repository
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    import torch

    threads = args.threads or (1 if args.dry_run and device == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    p = PROFILES[mode]
    results = {"meta": {"mode": mode, "device": device, "started": datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/gpu_check.py "
        + " ".join(argv if argv is not None else sys.argv[1:]), "profile": {k: v for k, v in p.items()}, "_t0": t0},
        "sections": {}}
    if is_cuda(device) and not torch.cuda.is_available():
        results["sections"]["env"] = {"status": "error", "error": "no CUDA device: torch.cuda.is_available() is "
                                      "False (run with --dry-run on a CPU)", "seconds": 0, "budget_s": 0}
        write_results(results, args.out)
        print(results["sections"]["env"]["error"], file=sys.stderr)
        return 2
    ctx = {"p": p, "device": device, "out": args.out}
    sections = [(name, BUILDERS[name](ctx), args.budget_scale * p["budgets"][name]) for name in args.sections]
    run_all(sections, results, lambda r: write_results(r, args.out))
    write_results(results, args.out)
    bad = {n: r["status"] for n, r in results["sections"].items() if r["status"] not in ("ok", "partial")}
    print(f"results: {os.path.join(args.out, 'gpu_check.md')} and gpu_check.json"
          + (f"; NOT ok: {bad}" if bad else "; every section ok (or partial: budget)"), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

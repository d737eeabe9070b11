"""benchmarks/gpu_check.sh --dry-run on the CPU: the GPU check's own code path at small sizes, so
that it cannot rot before a GPU is there; and its section runner (failures recorded, budgets)."""
import importlib.util
import json
import os
import subprocess
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = ["cub", "cars"]  # the dry run's batch shapes (the real run: sop and inshop too)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("_gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_passes_on_cpu_and_writes_the_results(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out))
    start = time.perf_counter()
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "pytest_cuda.log"]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["meta"]["mode"] == "dry" and results["meta"]["device"] == "cpu"
    sections = results["sections"]
    assert list(sections) == ["env", "tests", "train", "attention", "extract", "pipeline"]
    assert {name: r["status"] for name, r in sections.items()} == dict.fromkeys(sections, "ok"), sections

    assert sections["env"]["info"]["faiss"] and sections["env"]["matmul_bf16"]["tflops"] > 0
    # The CUDA tests were collected and, without a GPU, all skipped.
    counts = sections["tests"]["counts"]
    assert not counts.get("failed") and not counts.get("error")
    if not torch.cuda.is_available():
        assert counts.get("skipped", 0) >= 10 and not counts.get("passed")

    train = sections["train"]["rows"]
    assert all("error" not in r and r["images_per_s"] > 0 for r in train), train
    kinds = {(r["dataset"], r["precision"], r["memory_format"], r["kind"], r["cudnn_benchmark"]) for r in train}
    for name in SHAPES:
        for precision in ("bf16", "fp32"):
            for kind in ("full", "backbone", "graph_mpn"):
                assert (name, precision, "channels_last", kind, False) in kinds
    assert ("cub", "fp32", "nchw", "full", False) in kinds and ("cub", "bf16", "channels_last", "full", True) in kinds

    attention = sections["attention"]["rows"]
    assert {(r["graph"], r["B"], r["method"]) for r in attention if "ms" in r} == {
        (g, b, m) for g in ("full", "knn") for b in (64, 128) for m in ("dense", "sparse", "auto")}
    assert all(r["dense"] for r in attention if r["method"] == "dense")
    assert not any(r["dense"] for r in attention if r["method"] == "sparse")

    assert [r["precision"] for r in sections["extract"]["rows"]] == ["bf16", "fp32"]
    assert all(r["images_per_s"] > 0 and r["embedding_shape"][1] == 512 for r in sections["extract"]["rows"])
    pipeline = sections["pipeline"]["rows"]
    assert [(r["split"], r["workers"] > 0) for r in pipeline] == [("train", True), ("train", False), ("test", True)]
    assert all(r["images_per_s"] > 0 for r in pipeline), pipeline

    summary = results["summary"]["shapes"]
    assert set(summary) == set(SHAPES)
    for row in summary.values():
        assert row["bf16_images_per_s"] > 0 and row["fp32_over_bf16"] > 0 and row["bound_by"]
        assert row["bf16_graph_mpn_share"] is not None
    md = (out / "gpu_check.md").read_text()
    for heading in ("DRY RUN", "## Training step", "## Attention layer", "## Embedding extraction",
                    "## Input pipeline", "## CUDA tests", "benchmarks/RESULTS_gpu.md"):
        assert heading in md, heading
    assert "| cub | 6 x 9 |" in md
    print(f"dry run: {seconds:.1f} s ({results['meta']['total_s']} s inside gpu_check.py)")


def test_a_failing_or_overrunning_section_is_recorded_and_the_others_run(tmp_path):
    gc = load_gpu_check()
    written = []

    def ok(budget, rec):
        rec["rows"] = [1]

    def fails(budget, rec):
        rec["rows"] = ["measured before the failure"]
        raise RuntimeError("CUDA out of memory (simulated)")

    def hangs(budget, rec):
        rec["rows"] = ["measured before the hang"]
        time.sleep(30)

    def soft(budget, rec):
        while budget.allows(0.05):
            time.sleep(0.01)
        rec["skipped"] = ["the rest"]

    results = {"sections": {}}
    old = gc.HARD_GRACE_S
    gc.HARD_GRACE_S = 0.3
    try:
        start = time.perf_counter()
        gc.run_all([("a", ok, 5), ("b", fails, 5), ("c", hangs, 0.2), ("d", soft, 0.3), ("e", ok, 5)], results,
                   lambda r: written.append(list(r["sections"])))
        assert time.perf_counter() - start < 5
    finally:
        gc.HARD_GRACE_S = old
    s = results["sections"]
    assert [s[n]["status"] for n in "abcde"] == ["ok", "error", "timeout", "partial", "ok"]
    assert "CUDA out of memory" in s["b"]["error"] and s["b"]["rows"] == ["measured before the failure"]
    assert s["c"]["rows"] == ["measured before the hang"] and s["c"]["seconds"] < 2
    assert written == [list("a"), list("ab"), list("abc"), list("abcd"), list("abcde")]  # after every section


def test_without_cuda_the_real_run_stops_with_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    gc = load_gpu_check()
    cwd = os.getcwd()
    try:
        assert gc.main(["--out", str(tmp_path), "--sections", "env"]) == 2
    finally:
        os.chdir(cwd)
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "no CUDA device" in results["sections"]["env"]["error"]
    assert "--dry-run" in results["sections"]["env"]["error"]

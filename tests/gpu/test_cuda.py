"""What only a GPU can show: the model, both attention paths, the trainer and evaluation on CUDA,
AMP in bfloat16 and float16 (its grad scaler saved and restored on resume).

Every test is marked ``cuda`` (pytest.ini) and skipped without a CUDA device, so on a CPU machine
(CI) this file only proves it imports. ``bash benchmarks/gpu_check.sh`` runs it on the GPU machine
(``python -m pytest -m cuda tests/gpu/test_cuda.py``).
"""
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from ibc_geo.config import load_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HERE = os.path.dirname(os.path.abspath(__file__))


def _tiny_overrides() -> list:
    """tests/engine/tiny_run.py's TINY, loaded by path (that folder is not on sys.path here)."""
    spec = importlib.util.spec_from_file_location("_tiny_run_for_cuda", os.path.join(HERE, "..", "engine", "tiny_run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.TINY)


TINY = _tiny_overrides()


@pytest.fixture
def cuda_cfg(tmp_path):
    def make(*overrides, out="run"):
        return load_config(None, TINY + ["device", "cuda", "output_dir", str(tmp_path / out)] + list(overrides))

    return make


@pytest.fixture
def exact_float32():
    """No TF32 (cuDNN convolutions use it by default): float32 comparisons with the CPU."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def read_state(cfg, name="last.pt"):
    from ibc_geo.engine.checkpoint import load_checkpoint

    return load_checkpoint(os.path.join(cfg.output_dir, "checkpoints", name))


def logged_losses(cfg) -> list:
    with open(os.path.join(cfg.output_dir, "log.txt")) as f:
        lines = [line for line in f if line.startswith("epoch")]
    values = []
    for line in lines:
        part = line.split("|")[1].split()  # "loss backbone 1.23 mpn 1.45 total 2.68"
        values += [float(v) for v in part[2::2]]
    return values


# -------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("topology", ["full", "knn", "random", "threshold", "same_class", "none"])
def test_model_forward_backward_on_cuda(cuda_cfg, topology):
    from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel

    cfg = cuda_cfg("graph.topology", topology, "graph.k", "3")
    torch.manual_seed(0)
    model = IntraBatchModel.from_config(cfg, num_classes=5).cuda().train()
    images = torch.randn(12, 3, 32, 32, device="cuda")
    labels = torch.arange(3, device="cuda").repeat_interleave(4)
    out = model(images, labels)
    assert out.embeddings.is_cuda and out.backbone_logits.is_cuda and out.graph.edge_index.is_cuda
    if topology != "none":
        assert out.mpn_logits.is_cuda and out.mpn_logits.shape == (12, 5)
    terms = IntraBatchLoss.from_config(cfg)(labels, out.backbone_logits, out.mpn_logits)
    assert math.isfinite(float(terms["total"].detach()))
    terms["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.is_cuda and torch.isfinite(g).all() for g in grads)


def test_model_under_bf16_autocast_on_cuda(cuda_cfg):
    from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel

    cfg = cuda_cfg()
    model = IntraBatchModel.from_config(cfg, num_classes=5).cuda()
    images = torch.randn(12, 3, 32, 32, device="cuda")
    labels = torch.arange(3, device="cuda").repeat_interleave(4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images, labels)
    assert out.embeddings.dtype == torch.bfloat16
    terms = IntraBatchLoss.from_config(cfg)(labels, out.backbone_logits, out.mpn_logits)
    assert terms["total"].dtype == torch.float32 and math.isfinite(float(terms["total"]))
    terms["total"].backward()


# ---------------------------------------------------------------------------------- attention
def _layers(path_a, path_b, channels, heads, sink, device):
    from ibc_geo.nn import IntraBatchAttention

    torch.manual_seed(0)
    a = IntraBatchAttention(channels, heads, dropout=0.0, attention_path=path_a, sink=sink).to(device).eval()
    b = IntraBatchAttention(channels, heads, dropout=0.0, attention_path=path_b, sink=sink).to(device).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def _forward_backward(layer, x, edge_index):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x, edge_index)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("graph", ["full", "knn"])
@pytest.mark.parametrize("sink", [True, False])
def test_dense_equals_sparse_on_cuda(exact_float32, graph, sink):
    from ibc_geo.graph import build_topology

    N, D, H = 300, 512, 8
    x = torch.randn(N, D, device="cuda")
    topo = build_topology("full") if graph == "full" else build_topology("knn", k=10)
    edge_index = topo(Data(x=x)).edge_index
    assert edge_index.is_cuda
    dense, sparse = _layers("dense", "sparse", D, H, sink, "cuda")
    assert dense.dense_plan(edge_index, N)[0] and not sparse.dense_plan(edge_index, N)[0]
    out_d, gx_d, gp_d = _forward_backward(dense, x, edge_index)
    out_s, gx_s, gp_s = _forward_backward(sparse, x, edge_index)
    torch.testing.assert_close(out_d, out_s, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(gx_d, gx_s, atol=2e-5, rtol=1e-4)
    for name in gp_d:
        torch.testing.assert_close(gp_d[name], gp_s[name], atol=5e-5, rtol=1e-4, msg=name)
    # ... and both equal the CPU in float64.
    ref, _ = _layers("sparse", "sparse", D, H, sink, "cpu")
    ref = ref.double()
    out_ref = ref(x.cpu().double(), edge_index.cpu())
    torch.testing.assert_close(out_d.cpu().double(), out_ref, atol=5e-5, rtol=1e-4)


def test_dense_head_chunks_with_checkpointing_on_cuda(exact_float32):
    # The bounded-memory path of large batches: a few heads at a time, recomputed in backward.
    N, D, H = 512, 512, 8
    x = torch.randn(N, D, device="cuda")
    edge_index = torch.stack([torch.arange(N, device="cuda").repeat(N),
                              torch.arange(N, device="cuda").repeat_interleave(N)])
    whole, chunked = _layers("dense", "dense", D, H, True, "cuda")
    chunked.dense_chunk_bytes = N * (N + 1) * 4 * 2  # two heads per chunk
    out_w, gx_w, gp_w = _forward_backward(whole, x, edge_index)
    out_c, gx_c, gp_c = _forward_backward(chunked, x, edge_index)
    torch.testing.assert_close(out_c, out_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_c, gx_w, atol=1e-5, rtol=1e-5)
    for name in gp_w:
        torch.testing.assert_close(gp_c[name], gp_w[name], atol=1e-5, rtol=1e-5, msg=name)


def test_attention_in_training_mode_with_dropout_and_bf16_on_cuda():
    from ibc_geo.graph import build_topology
    from ibc_geo.nn import IntraBatchAttention

    x = torch.randn(512, 512, device="cuda", requires_grad=True)
    for graph in ("full", "knn"):
        topo = build_topology("full") if graph == "full" else build_topology("knn", k=10)
        edge_index = topo(Data(x=x.detach())).edge_index
        for path in ("auto", "dense", "sparse"):
            layer = IntraBatchAttention(512, 8, dropout=0.1, attention_path=path, sink=True).cuda().train()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = layer(x, edge_index)
            assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all(), (graph, path)
            out.float().square().mean().backward()
            assert torch.isfinite(x.grad).all()
            x.grad = None


# ------------------------------------------------------------------------------------ trainer
def test_trainer_on_cuda(cuda_cfg):
    from ibc_geo.engine import evaluate_checkpoint, train

    cfg = cuda_cfg()
    result = train(cfg)
    for key in ("recall@1", "map@r", "nmi"):
        assert 0.0 <= result["test"][key] <= 1.0
    assert all(math.isfinite(v) for v in logged_losses(cfg))
    state = read_state(cfg)
    assert state["epoch"] == 2 and "cuda" in state["rng"] and state["scaler"] == {}
    again = evaluate_checkpoint(cfg, os.path.join(cfg.output_dir, "checkpoints", "best.pt"))
    assert again["recall@1"] == pytest.approx(result["test"]["recall@1"], abs=0.01)


def test_amp_bfloat16_trains_with_autocast_and_no_scaler(cuda_cfg, monkeypatch):
    from ibc_geo.engine import train
    from ibc_geo.modeling import IntraBatchModel

    seen = []
    original = IntraBatchModel.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out.embeddings.dtype)
        return out

    monkeypatch.setattr(IntraBatchModel, "forward", forward)
    cfg = cuda_cfg("train.amp", "true", "train.amp_dtype", "bfloat16")
    result = train(cfg)
    assert seen and seen[0] == torch.bfloat16  # the training forward ran under bf16 autocast
    assert all(math.isfinite(v) for v in logged_losses(cfg))
    assert math.isfinite(result["test"]["recall@1"])
    assert read_state(cfg)["scaler"] == {}  # bf16 needs no grad scaler


def test_amp_float16_grad_scaler_saved_and_restored_on_resume(cuda_cfg, monkeypatch):
    import ibc_geo.engine.trainer as trainer_module
    from ibc_geo.engine import save_checkpoint, train

    cfg = cuda_cfg("train.amp", "true", "train.amp_dtype", "float16", "train.epochs", "1", out="fp16")
    train(cfg)
    assert all(math.isfinite(v) for v in logged_losses(cfg))
    state = read_state(cfg)
    scaler = state["scaler"]
    assert scaler and math.isfinite(scaler["scale"]) and scaler["scale"] > 0 and "_growth_tracker" in scaler
    # A scale no fresh scaler has (65536 by default): the resumed run must start from it.
    state["scaler"]["scale"] = 1024.0
    save_checkpoint(state, os.path.join(cfg.output_dir, "checkpoints", "last.pt"))

    restored = []
    original = trainer_module.Trainer._restore

    def restore(self, saved):
        original(self, saved)
        restored.append(self.scaler.get_scale())

    monkeypatch.setattr(trainer_module.Trainer, "_restore", restore)
    resumed = cuda_cfg("train.amp", "true", "train.amp_dtype", "float16", "train.epochs", "2",
                       "train.resume", "true", out="fp16")
    result = train(resumed)
    assert restored == [1024.0]
    final = read_state(resumed)
    assert final["epoch"] == 2 and 0 < final["scaler"]["scale"] <= 1024.0
    assert all(math.isfinite(v) for v in logged_losses(resumed))
    assert math.isfinite(result["test"]["recall@1"])
    with open(os.path.join(resumed.output_dir, "metrics.json")) as f:
        assert json.load(f)["epochs"] == 2


# --------------------------------------------------------------------------------- evaluation
def test_evaluation_of_cuda_embeddings_equals_cpu(cuda_cfg, exact_float32):
    from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
    from ibc_geo.engine import evaluate_model
    from ibc_geo.evaluation import extract_embeddings
    from ibc_geo.modeling import IntraBatchModel

    cfg = cuda_cfg()
    torch.manual_seed(0)
    model = IntraBatchModel.from_config(cfg, num_classes=5)
    dataset = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    loader = build_eval_loader(cfg, dataset)
    emb_cpu, y_cpu = extract_embeddings(model, loader, "cpu")
    metrics_cpu = evaluate_model(cfg, model, dataset, torch.device("cpu"))
    model.cuda()
    emb_cuda, y_cuda = extract_embeddings(model, loader, "cuda")
    assert emb_cuda.dtype == np.float32 and emb_cuda.shape == emb_cpu.shape
    np.testing.assert_array_equal(y_cuda, y_cpu)
    np.testing.assert_allclose(emb_cuda, emb_cpu, atol=1e-5)
    metrics_cuda = evaluate_model(cfg, model, dataset, torch.device("cuda"))
    assert set(metrics_cuda) == set(metrics_cpu)
    # The metrics equal the CPU's: a 1e-5 difference may swap two neighbours at a near tie, so at
    # most a query or two of the split (NMI: k-means on the same points, the same seed).
    tol = 2.5 / len(dataset)
    for key, value in metrics_cpu.items():
        assert metrics_cuda[key] == pytest.approx(value, abs=0.02 if key == "nmi" else tol), key


def test_bf16_extraction_on_cuda_close_to_float32(cuda_cfg):
    from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
    from ibc_geo.evaluation import extract_embeddings
    from ibc_geo.modeling import IntraBatchModel

    cfg = cuda_cfg()
    model = IntraBatchModel.from_config(cfg, num_classes=5).cuda()
    loader = build_eval_loader(cfg, build_dataset(cfg, "test", build_transforms(cfg, train=False)))
    fp32, _ = extract_embeddings(model, loader, "cuda")
    bf16, _ = extract_embeddings(model, loader, "cuda", amp_dtype="bfloat16")
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(axis=1)  # both L2-normalised
    assert cosine.min() > 0.98

"""Training-step throughput and the share of the step spent in the batch graph + MPN.

For each benchmark's batch shape (METHOD.md §4: CUB 6x9, Cars 10x7, SOP 15x6, In-Shop 14x4) it
times whole training steps (backbone forward/backward, graph, MPN, both losses, RAdam step) and,
in the same run, the graph construction + MPN forward/backward alone on the step's embeddings.
It also times the step with the ResNet in contiguous (NCHW) memory format, as a ratio against
``channels_last``. Not a test: it prints a table. ``benchmarks/gpu_check.py`` reuses its
functions on a GPU (AMP, backbone-only steps, peak memory).

    python benchmarks/train_step.py                       # ResNet-50 at 227 px (slow on a CPU)
    python benchmarks/train_step.py --backbone resnet18 --image-size 64 --steps 5
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from typing import Callable, Optional

import torch

from ibc_geo.config import load_config
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from torch_geometric.data import Data

# dataset: (P, K, MPN layers, MPN heads), as configs/<dataset>.yaml sets them
SHAPES = {"cub": (6, 9, 1, 2), "cars": (10, 7, 2, 8), "sop": (15, 6, 1, 8), "inshop": (14, 4, 1, 4)}


def build(name: str, backbone: str = "resnet50", image_size: int = 227, topology: str = "full",
          device: str = "cpu", channels_last: bool = True, num_classes: int = 100):
    """Model (random init), loss, RAdam, one random batch of ``name``'s P x K shape and its labels."""
    P, K, layers, heads = SHAPES[name]
    cfg = load_config(f"configs/{name}.yaml", [
        "model.backbone", backbone, "model.pretrained", "none", "model.channels_last", str(channels_last),
        "data.image_size", str(image_size), "graph.topology", topology, "device", str(device)])
    model = IntraBatchModel.from_config(cfg, num_classes).to(device)
    loss = IntraBatchLoss.from_config(cfg)
    opt = torch.optim.RAdam(model.parameters(), lr=cfg.train.lr)
    images = torch.randn(P * K, 3, image_size, image_size, device=device)
    labels = torch.arange(P, device=device).repeat_interleave(K)
    return model, loss, opt, images, labels


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def autocast(device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device``'s type with ``amp_dtype``; a no-op context when it is None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)


def timed(fn: Callable[[], None], steps: int, device, warmup: int = 1, min_time: float = 0.0,
          max_steps: int = 1000) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup`` calls; with ``min_time`` > 0
    as many more calls (at most ``max_steps``) as one call's duration says fill ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    if min_time > 0:
        start = time.perf_counter()
        fn()
        sync(device)
        one = max(time.perf_counter() - start, 1e-6)
        steps = max(steps, min(max_steps, int(min_time / one) + 1))
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def make_step(model, loss, opt, images, labels, amp_dtype: Optional[torch.dtype] = None,
              backbone_only: bool = False) -> Callable[[], None]:
    """One training step as the trainer runs it (autocast around the model, the loss in float32).

    ``backbone_only``: the same step without graph and MPN (backbone embedding, its classifier and
    its cross-entropy only), the baseline of the graph + MPN share.
    """
    device = images.device

    def step():
        with autocast(device, amp_dtype):
            if backbone_only:
                f = model.backbone.embed(images)
                out_logits, mpn_logits = model.backbone.classify(f), None
            else:
                out = model(images, labels)
                out_logits, mpn_logits = out.backbone_logits, out.mpn_logits
        terms = loss(labels, out_logits, mpn_logits)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    return step


def time_steps(model, loss, opt, images, labels, steps: int, device, amp_dtype: Optional[torch.dtype] = None,
               backbone_only: bool = False, warmup: int = 1, min_time: float = 0.0) -> float:
    """Seconds per training step (see :func:`make_step` and :func:`timed`)."""
    step = make_step(model, loss, opt, images, labels, amp_dtype, backbone_only)
    return timed(step, steps, device, warmup=warmup, min_time=min_time)


def time_graph_mpn(model, loss, images, labels, steps: int, device, amp_dtype: Optional[torch.dtype] = None,
                   warmup: int = 1, min_time: float = 0.0) -> float:
    """Seconds per graph construction + MPN forward/backward on the batch's (fixed) embeddings."""
    with torch.no_grad(), autocast(device, amp_dtype):
        f = model.embed(images)
    f = f.detach().float().requires_grad_(True)

    def part():
        graph = model.topology(Data(x=f.detach(), y=labels))
        with autocast(device, amp_dtype):
            h, logits = model.mpn(f, graph.edge_index)
        loss(labels, torch.zeros_like(logits), logits)["mpn"].backward()

    return timed(part, steps, device, warmup=warmup, min_time=min_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--topology", default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--datasets", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    print(f"{args.backbone} at {args.image_size} px, topology {args.topology}, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps each")
    print("| dataset | batch | images/s (channels_last) | graph + MPN share of step | NCHW step / channels_last step |")
    print("| --- | --- | --- | --- | --- |")
    common = dict(backbone=args.backbone, image_size=args.image_size, topology=args.topology, device=args.device)
    for name in args.datasets:
        torch.manual_seed(0)
        model, loss, opt, images, labels = build(name, channels_last=True, **common)
        step = time_steps(model, loss, opt, images, labels, args.steps, args.device)
        part = time_graph_mpn(model, loss, images, labels, args.steps, args.device)
        model, loss, opt, images, labels = build(name, channels_last=False, **common)
        nchw = time_steps(model, loss, opt, images, labels, args.steps, args.device)
        print(f"| {name} | {len(labels)} | {len(labels) / step:.1f} | {100 * part / step:.2f}% | {nchw / step:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()

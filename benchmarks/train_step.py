"""Training-step throughput and the share of the step spent in the batch graph + MPN.

For each benchmark's batch shape (METHOD.md §4: CUB 6x9, Cars 10x7, SOP 15x6, In-Shop 14x4) it
times whole training steps (backbone forward/backward, graph, MPN, both losses, RAdam step) and,
in the same run, the graph construction + MPN forward/backward alone on the step's embeddings.
It also times the step with the ResNet in contiguous (NCHW) memory format, as a ratio against
``channels_last``. Not a test: it prints a table.

    python benchmarks/train_step.py                       # ResNet-50 at 227 px (slow on a CPU)
    python benchmarks/train_step.py --backbone resnet18 --image-size 64 --steps 5
"""
from __future__ import annotations

import argparse
import time

import torch

from ibc_geo.config import load_config
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from torch_geometric.data import Data

SHAPES = {"cub": (6, 9, 1, 2), "cars": (10, 7, 2, 8), "sop": (15, 6, 1, 8), "inshop": (14, 4, 1, 4)}


def build(name: str, args, channels_last: bool):
    P, K, layers, heads = SHAPES[name]
    cfg = load_config(f"configs/{name}.yaml", [
        "model.backbone", args.backbone, "model.pretrained", "none", "model.channels_last", str(channels_last),
        "data.image_size", str(args.image_size), "graph.topology", args.topology, "device", args.device])
    num_classes = 100
    model = IntraBatchModel.from_config(cfg, num_classes).to(args.device)
    loss = IntraBatchLoss.from_config(cfg)
    opt = torch.optim.RAdam(model.parameters(), lr=cfg.train.lr)
    images = torch.randn(P * K, 3, args.image_size, args.image_size, device=args.device)
    labels = torch.arange(P, device=args.device).repeat_interleave(K)
    return model, loss, opt, images, labels


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: str) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def time_steps(model, loss, opt, images, labels, steps: int, device: str) -> float:
    def step():
        out = model(images, labels)
        terms = loss(labels, out.backbone_logits, out.mpn_logits)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()

    return timed(step, steps, device)


def time_graph_mpn(model, loss, images, labels, steps: int, device: str) -> float:
    with torch.no_grad():
        f = model.embed(images)
    f = f.detach().requires_grad_(True)

    def part():
        graph = model.topology(Data(x=f.detach(), y=labels))
        h, logits = model.mpn(f, graph.edge_index)
        loss(labels, torch.zeros_like(logits), logits)["mpn"].backward()

    return timed(part, steps, device)


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
    for name in args.datasets:
        torch.manual_seed(0)
        model, loss, opt, images, labels = build(name, args, channels_last=True)
        step = time_steps(model, loss, opt, images, labels, args.steps, args.device)
        part = time_graph_mpn(model, loss, images, labels, args.steps, args.device)
        model, loss, opt, images, labels = build(name, args, channels_last=False)
        nchw = time_steps(model, loss, opt, images, labels, args.steps, args.device)
        print(f"| {name} | {len(labels)} | {len(labels) / step:.1f} | {100 * part / step:.2f}% | {nchw / step:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()

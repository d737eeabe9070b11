"""The attention of trained runs, recomputed from their checkpoints: per MPN layer, on the fixed
P x K batch of the selection split that the trainer's pictures and ``metrics.json`` use.

    python benchmarks/attention.py output/ablations/mpn_attention/*/seed=*

prints one Markdown row per run folder and layer: the same-class share of the attention over nodes
against chance, the share on the node's own self loop, the share of all attention that goes to
nodes rather than to the sink, the entropy against uniform attention and the within-row logit std
(:func:`ibc_geo.nn.attention_statistics`). It reads ``config.yaml`` and ``checkpoints/best.pt``
(``--ckpt last`` for ``last.pt``) and writes nothing: runs trained before ``metrics.json`` kept
the attention (or before a statistic existed) get their numbers here. Runs without an MPN are skipped.
"""
from __future__ import annotations

import argparse
import os

import torch

from ibc_geo.config import load_config
from ibc_geo.data import build_dataset, build_transforms
from ibc_geo.engine.checkpoint import load_checkpoint, load_model_state
from ibc_geo.engine.trainer import fixed_batch, measure_attention
from ibc_geo.graph import build_topology_from_config
from ibc_geo.modeling import IntraBatchModel
from ibc_geo.utils.run_dir import RunDir

COLUMNS = ("same_class", "same_class_uniform", "self", "mass_on_nodes", "entropy", "entropy_uniform", "logit_std")


def run_attention(run_dir: str, ckpt: str = "best") -> list | None:
    """Per layer the attention statistics of ``run_dir``'s checkpoint, or ``None`` without an MPN."""
    folder = RunDir(run_dir)
    cfg = load_config(str(folder.config), ["device", "cpu", "data.workers", "0"])
    if not build_topology_from_config(cfg).message_passing:
        return None
    num_classes = build_dataset(cfg, "train", None).num_classes
    model = IntraBatchModel.from_config(cfg, num_classes, pretrained="none")
    path = folder.best if ckpt == "best" else folder.last
    load_model_state(model, load_checkpoint(path)["model"], str(path))
    batch = fixed_batch(cfg, build_dataset(cfg, cfg.eval.selection, build_transforms(cfg, train=False)))
    if batch is None:
        return None
    _, stats = measure_attention(model, *batch)
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each with config.yaml and checkpoints/)")
    parser.add_argument("--ckpt", choices=("best", "last"), default="best")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    print("| run | layer | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for run in args.runs:
        stats = run_attention(run, args.ckpt)
        for layer, values in enumerate(stats or []):
            print(f"| {os.path.normpath(run)} | {layer} | " + " | ".join(f"{values[c]:.4f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()

"""Tiny timm backbones (random init, a few hundred thousand parameters) through the real trainer
with the full-graph MPN: one CNN, one ViT; train, checkpoint, resume, evaluate."""
import json
import os

import pytest
import torch

from ibc_geo.engine import evaluate_checkpoint, train
from ibc_geo.engine.checkpoint import load_checkpoint

pytest.importorskip("timm")

CASES = {
    "cnn": ["model.backbone", "timm/test_convnext", "model.pooling", "max"],
    "vit": ["model.backbone", "timm/test_vit", "model.pooling", "model", "model.backbone_kwargs", "{img_size: 32}"],
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_timm_backbone_trains_resumes_and_evaluates(tiny_cfg, kind):
    cfg = tiny_cfg(*CASES[kind], "train.epochs", "1")
    first = train(cfg)
    ckpt = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
    state = load_checkpoint(ckpt)
    assert any(k.startswith("backbone.trunk.") for k in state["model"]) and "mpn.classifier.weight" in state["model"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # resume for a second epoch: the weights move on from the checkpoint's
    resumed = train(tiny_cfg(*CASES[kind], "train.epochs", "2", "train.resume", "true"))
    assert resumed["epochs"] == 2 and first["epochs"] == 1
    record = json.load(open(os.path.join(cfg.output_dir, "metrics.json")))
    assert 0.0 <= record["test"]["recall@1"] <= 1.0
    again = evaluate_checkpoint(tiny_cfg(*CASES[kind], "train.epochs", "2"),
                                os.path.join(cfg.output_dir, "checkpoints", "best.pt"))
    assert again["recall@1"] == pytest.approx(record["test"]["recall@1"])
    assert again["map@r"] == pytest.approx(record["test"]["map@r"])

"""The optimiser builder (engine.optim): the paper's RAdam unchanged, parameter groups with their
multipliers through LR drops, warm-up and resume, the loss's state in the checkpoints."""
import os

import pytest
import torch
import ibc_geo.engine.trainer as trainer_module
from ibc_geo.config import CHOICES, ConfigError, load_config
from ibc_geo.engine import train
from ibc_geo.engine.checkpoint import load_checkpoint, save_checkpoint
from ibc_geo.engine.optim import (OPTIMIZERS, backbone_parameters, build_optimizer, scheduled_lr,
                                  warmup_factor)
from ibc_geo.modeling import IntraBatchLoss, IntraBatchModel
from tiny_run import TINY, train_killed_in_epoch

PROXY = ["loss.backbone", "pml/ProxyAnchorLoss", "loss.backbone_kwargs", "{margin: 0.1, alpha: 32}"]


def model_and_loss(cfg, seed=0):
    torch.manual_seed(seed)
    model = IntraBatchModel.from_config(cfg, num_classes=3).train()
    return model, IntraBatchLoss.from_config(cfg, num_classes=3)


def steps(cfg, model, loss, optimizer, n=2):
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(3).repeat_interleave(4)
    for _ in range(n):
        torch.manual_seed(5)  # the MPN's dropout
        out = model(images, labels)
        extra = {"embeddings": out.embeddings} if loss.reads_embeddings else {}
        optimizer.zero_grad(set_to_none=True)
        loss(out.labels, out.backbone_logits, out.mpn_logits, **extra)["total"].backward()
        optimizer.step()


def test_the_default_is_the_paper_radam_with_the_same_numbers():
    cfg = load_config(None, TINY + ["train.weight_decay", "0.01"])
    model, loss = model_and_loss(cfg)
    optimizer = build_optimizer(cfg, model, loss)
    assert isinstance(optimizer, torch.optim.RAdam) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["name"], group["lr_mult"], group["lr"]) == ("model", 1.0, cfg.train.lr)
    assert group["decoupled_weight_decay"] is True and group["weight_decay"] == 0.01
    steps(cfg, model, loss, optimizer)
    # What the trainer hard-wired before the builder, on the same model: the same weights, bit for bit.
    old_model, old_loss = model_and_loss(cfg)
    old = torch.optim.RAdam(old_model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                            decoupled_weight_decay=True)
    steps(cfg, old_model, old_loss, old)
    for (name, a), b in zip(model.state_dict().items(), old_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_adamw_and_sgd(name, cls):
    cfg = load_config(None, TINY + ["train.optimizer", name, "train.momentum", "0.8", "train.weight_decay", "0.001"])
    model, loss = model_and_loss(cfg)
    optimizer = build_optimizer(cfg, model, loss)
    assert type(optimizer) is cls and optimizer.param_groups[0]["weight_decay"] == 0.001
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.8
    before = [p.detach().clone() for p in model.parameters()]
    steps(cfg, model, loss, optimizer, n=1)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_groups_proxies_at_lr_mult_and_the_trunk_at_backbone_lr_mult():
    cfg = load_config(None, TINY + PROXY + ["train.backbone_lr_mult", "0.1", "loss.lr_mult", "50"])
    model, loss = model_and_loss(cfg)
    optimizer = build_optimizer(cfg, model, loss)
    lr = cfg.train.lr
    assert [(g["name"], g["lr_mult"]) for g in optimizer.param_groups] == [
        ("head", 1.0), ("backbone", 0.1), ("loss", 50.0)]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, 0.1 * lr, 50 * lr])
    head, trunk, own = ([id(p) for p in g["params"]] for g in optimizer.param_groups)
    assert own == [id(loss.backbone_loss.loss.proxies)]
    assert trunk == [id(p) for p in model.backbone.trunk.parameters()]  # the pretrained trunk only
    assert trunk == [id(p) for p in backbone_parameters(model)]
    new = list(model.backbone.embedding.parameters()) + list(model.backbone.classifier.parameters()) \
        + list(model.mpn.parameters())
    assert sorted(head) == sorted(id(p) for p in new)  # the new layers at lr
    assert sorted(head + trunk) == sorted(id(p) for p in model.parameters())  # each parameter once
    # Without proxies and at multiplier 1: the one group of the paper.
    cfg = load_config(None, TINY + ["loss.backbone", "pml/MultiSimilarityLoss"])
    assert [g["name"] for g in build_optimizer(cfg, *model_and_loss(cfg)).param_groups] == ["model"]


def test_schedule_and_warmup_factors():
    cfg = load_config(None, TINY + ["train.warmup_epochs", "2", "train.lr", "1e-3"])
    assert [warmup_factor(cfg, e, i, 2) for e in (1, 2) for i in range(2)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_factor(cfg, 3, 0, 2) == 1.0
    assert warmup_factor(load_config(None, TINY), 1, 0, 2) == 1.0  # no warm-up
    for cumulative, want in (("false", [1e-3, 1e-4, 1e-4]), ("true", [1e-3, 1e-4, 1e-5])):
        c = load_config(None, TINY + ["train.lr", "1e-3", "train.lr_drop_cumulative", cumulative])
        assert [scheduled_lr(c, k) for k in range(3)] == pytest.approx(want)


class StepLRs(list):
    initial: dict = {}


def record_step_lrs(monkeypatch):
    """Every optimizer step's group LRs, in order (``seen``), and the loss's first state (``seen.initial``)."""
    seen = StepLRs()
    build = trainer_module.Trainer._build

    def spied(self, resume):
        build(self, resume)
        seen.initial = {k: v.clone() for k, v in self.loss_fn.state_dict().items()}
        step = self.optimizer.step

        def recording_step(*args, **kwargs):
            seen.append([g["lr"] for g in self.optimizer.param_groups])
            return step(*args, **kwargs)

        self.optimizer.step = recording_step

    monkeypatch.setattr(trainer_module.Trainer, "_build", spied)
    return seen


def test_proxy_anchor_run_with_warmup_and_a_drop_resumes_exactly(tiny_cfg, monkeypatch):
    # Full-graph MPN + Proxy Anchor; warm-up over 2 epochs of 2 iterations; a drop at epoch 2.
    common = PROXY + ["graph.topology", "full", "train.backbone_lr_mult", "0.1", "train.warmup_epochs", "2",
                      "train.lr_drop_epochs", "[2]", "train.lr", "1e-3"]
    seen = record_step_lrs(monkeypatch)
    full = tiny_cfg(*common, out="full")
    result = train(full)
    mults = [1.0, 0.1, 100.0]
    base = [1e-3 * 0.25, 1e-3 * 0.5, 1e-4 * 0.75, 1e-4]  # warm-up x the drop at epoch 2
    assert seen == [pytest.approx([b * m for m in mults]) for b in base]
    a = load_checkpoint(os.path.join(full.output_dir, "checkpoints", "last.pt"))
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx([1e-4 * m for m in mults])
    assert [g["name"] for g in a["optimizer"]["param_groups"]] == ["head", "backbone", "loss"]
    proxies = a["loss"]["backbone_loss.loss.proxies"]
    assert proxies.shape == (3, 32)  # train classes x model.embedding_dim
    assert (proxies - seen.initial["backbone_loss.loss.proxies"]).abs().max() > 1e-3  # trained (lr x 100)
    best = load_checkpoint(os.path.join(full.output_dir, "checkpoints", "best.pt"))
    assert set(best["loss"]) == {"backbone_loss.loss.proxies"}  # the drop reloads them with the weights
    assert 0.0 <= result["test"]["recall@1"] <= 1.0 and len(result["selection"]["history"]) == 2

    killed = tiny_cfg(*common, out="killed")
    train_killed_in_epoch(killed, 2, monkeypatch)
    seen.clear()
    resumed = train(tiny_cfg(*common, "train.resume", "true", out="killed"))
    assert seen == [pytest.approx([b * m for m in mults]) for b in base[2:]]
    b = load_checkpoint(os.path.join(killed.output_dir, "checkpoints", "last.pt"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(proxies, b["loss"]["backbone_loss.loss.proxies"])  # resume: the same proxies
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)
    assert resumed["test"] == result["test"]


def test_a_checkpoint_without_loss_state_or_multipliers_still_resumes(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    train(cfg)
    last = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
    state = load_checkpoint(last)
    assert state["loss"] == {}  # the cross-entropies have no state
    del state["loss"]  # as written before the builders
    for group in state["optimizer"]["param_groups"]:
        del group["lr_mult"], group["name"]
    save_checkpoint(state, last)
    train(tiny_cfg("train.epochs", "2", "train.resume", "true"))
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == 2
    assert [(g["name"], g["lr_mult"]) for g in resumed["optimizer"]["param_groups"]] == [("model", 1.0)]


@pytest.mark.parametrize("overrides, fragment", [
    (["train.optimizer", "adam"], "'train.optimizer': 'adam'; allowed: radam, adamw, sgd"),
    (["train.optimizer", "sgdm"], "allowed: radam, adamw, sgd (did you mean 'sgd'?)"),
    (["train.momentum", "1.0"], "'train.momentum': 1.0; must be in [0, 1)"),
    (["train.backbone_lr_mult", "-0.1"], "'train.backbone_lr_mult': -0.1; must be >= 0"),
    (["train.warmup_epochs", "-1"], "'train.warmup_epochs': -1; must be >= 0"),
])
def test_bad_optimizer_configs(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, TINY + overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_optimizer_choices_are_the_builders():
    assert CHOICES["train.optimizer"] == list(OPTIMIZERS)

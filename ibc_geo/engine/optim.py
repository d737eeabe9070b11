r"""The optimiser and its learning rates: parameter groups, LR drops and linear warm-up.

**Parameter groups**, each carrying its multiplier ``lr_mult`` (its LR is always the run's
current LR times it) and a ``name``:

- ``model``: every parameter of the model, at ``train.lr`` (one group, as the paper's RAdam had,
  while ``train.backbone_lr_mult`` is 1); with ``train.backbone_lr_mult`` :math:`m_b \ne 1` it
  splits into ``head`` (the embedding layer, both classifiers, the MPN: ``lr``) and
  ``backbone`` (the pretrained trunk, ``model.backbone`` without its ``embedding`` and
  ``classifier`` layers: :math:`m_b \cdot` ``lr``; fine-tuning a ViT wants :math:`m_b < 1`);
- ``loss``: the backbone loss's own parameters (Proxy Anchor's proxies, a classifier loss's class
  weights), at ``loss.lr_mult`` :math:`\cdot` ``lr``. The default 100 is what the official Proxy
  Anchor code gives its proxies (``train.py``: ``{'params': criterion.parameters(), 'lr':
  float(args.lr) * 100}``, github.com/tjddus9597/Proxy-Anchor-CVPR2020): proxies start random and
  must move far, while the pretrained backbone moves little. pytorch-metric-learning's docs
  likewise give such losses an optimizer of their own.

**Optimisers** (``train.optimizer``): ``radam`` (the paper's; weight decay decoupled from the
gradient, :math:`p \leftarrow p - \eta \lambda p`, as the official code), ``adamw`` (decoupled
too) and ``sgd`` (``train.momentum``; weight decay as an L2 term :math:`\lambda p` in the gradient,
PyTorch's SGD). ``train.weight_decay`` applies to every group.

**Learning rate.** With :math:`\eta_0` = ``train.lr``, :math:`\delta` = ``train.lr_drop_factor``
and :math:`k` drops done, the run's LR is :math:`\eta = \eta_0 \delta` after any drop
(:math:`\eta_0 \delta^k` with ``train.lr_drop_cumulative``); group :math:`g` gets
:math:`m_g \eta`. **Warm-up** (``train.warmup_epochs`` :math:`W > 0`): at iteration :math:`i`
(0-based) of epoch :math:`e` (1-based) of :math:`n_e` iterations, the LR is

.. math::
    \eta_{e,i} = \eta \cdot \min\!\left(1, \frac{e - 1 + (i + 1) / n_e}{W}\right),

rising linearly per iteration from :math:`\eta / (W n_1)` at the first step to exactly
:math:`\eta` at the last step of epoch :math:`W` (it depends on the epoch and the iteration only,
so a resumed run repeats it exactly).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch
from torch import nn

#: train.optimizer's choices.
OPTIMIZERS = ("radam", "adamw", "sgd")
#: The backbone's layers that are new, not pretrained: they learn at ``train.lr``.
BACKBONE_HEADS = ("embedding", "classifier")


def backbone_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The pretrained trunk's parameters: ``model.backbone`` without its embedding and classifier."""
    return [p for name, p in model.backbone.named_parameters() if name.split(".")[0] not in BACKBONE_HEADS]


def param_groups(cfg, model: nn.Module, loss: Optional[nn.Module] = None) -> List[dict]:
    """The parameter groups of the module docstring, each with ``lr`` (= ``train.lr * lr_mult``),
    ``lr_mult`` and ``name``; parameters in the model's order within each group."""
    lr = cfg.train.lr
    groups = []
    if cfg.train.backbone_lr_mult == 1.0:
        groups.append({"params": list(model.parameters()), "name": "model", "lr_mult": 1.0})
    else:
        trunk = {id(p) for p in backbone_parameters(model)}
        groups.append({"params": [p for p in model.parameters() if id(p) not in trunk], "name": "head",
                       "lr_mult": 1.0})
        groups.append({"params": [p for p in model.parameters() if id(p) in trunk], "name": "backbone",
                       "lr_mult": float(cfg.train.backbone_lr_mult)})
    own = list(loss.parameters()) if loss is not None else []
    if own:
        groups.append({"params": own, "name": "loss", "lr_mult": float(cfg.loss.lr_mult)})
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg, model: nn.Module, loss: Optional[nn.Module] = None) -> torch.optim.Optimizer:
    """``train.optimizer`` over :func:`param_groups` of the model and the loss."""
    groups = param_groups(cfg, model, loss)
    train = cfg.train
    if train.optimizer == "radam":
        # The official RAdam decays the weights decoupled from the gradient: p -= lr * wd * p.
        return torch.optim.RAdam(groups, lr=train.lr, weight_decay=train.weight_decay, decoupled_weight_decay=True)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    raise ValueError(f"unknown train.optimizer {train.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")


def restore_multipliers(optimizer: torch.optim.Optimizer, groups: Iterable[dict]) -> None:
    """After ``optimizer.load_state_dict``: the built groups' ``lr_mult`` and ``name`` (a checkpoint
    written before groups carried them holds one group with multiplier 1)."""
    for group, built in zip(optimizer.param_groups, groups):
        group["lr_mult"], group["name"] = built["lr_mult"], built["name"]


def scheduled_lr(cfg, drops: int) -> float:
    """The run's LR after ``drops`` LR drops (before warm-up and the groups' multipliers)."""
    train = cfg.train
    if drops == 0:
        return train.lr
    return train.lr * train.lr_drop_factor ** (drops if train.lr_drop_cumulative else 1)


def warmup_factor(cfg, epoch: int, iteration: int, iterations: int) -> float:
    """:math:`\\min(1, (e - 1 + (i + 1) / n_e) / W)` for iteration ``iteration`` (0-based) of
    ``epoch`` (1-based) of ``iterations``; 1 without warm-up."""
    warmup = cfg.train.warmup_epochs
    if warmup <= 0 or epoch > warmup:
        return 1.0
    return min(1.0, (epoch - 1 + (iteration + 1) / max(iterations, 1)) / warmup)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's LR to ``lr`` times its multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def share_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Under ``torch.distributed``: rank 0's gradients of ``parameters`` on every rank. For the
    loss's parameters, which DDP does not see: every rank computes the same loss on the same
    global batch, so their gradients agree; the broadcast makes them bitwise equal, whatever
    the kernels' reduction order."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for p in parameters:
        if p.grad is not None:
            torch.distributed.broadcast(p.grad, src=0)

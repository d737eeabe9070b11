"""The training objective of METHOD.md §1.4, with the backbone's loss chosen by ``loss.backbone``.

.. math::
    \\mathcal{L} = w_b \\, \\mathcal{L}_b + w_m \\, \\mathrm{CE}_\\epsilon\\!\\left(\\frac{z^{m}}{T}, y\\right),
    \\qquad \\mathcal{L}_b = \\mathrm{CE}_\\epsilon\\!\\left(\\frac{z^{b}}{T}, y\\right) \\text{ (ce, the paper)}

with :math:`\\mathrm{CE}_\\epsilon` the label-smoothed cross-entropy (``torch.nn.CrossEntropyLoss``
with ``label_smoothing``), :math:`z^b` the backbone logits, :math:`z^m` the MPN logits and
:math:`T` the temperature. ``loss.backbone pml/<LossName>`` replaces :math:`\\mathcal{L}_b` by a
pytorch-metric-learning loss on the backbone embeddings :math:`f` (:mod:`ibc_geo.nn.losses`, which
gives the formulas); the MPN's term stays the paper's cross-entropy.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ibc_geo.nn.losses import BackboneCrossEntropy, BackboneLoss, build_backbone_loss


class IntraBatchLoss(nn.Module):
    """Weighted backbone loss and label-smoothed MPN cross-entropy (on MPN logits / T).

    Args:
        temperature (float): logits are divided by it (default: ``1.0``).
        label_smoothing (float): :math:`\\epsilon` (default: ``0.1``).
        backbone_weight (float): :math:`w_b` (default: ``1.0``).
        mpn_weight (float): :math:`w_m` (default: ``1.0``).
        backbone_loss (BackboneLoss, optional): :math:`\\mathcal{L}_b` (default: the cross-entropy on
            backbone logits / T, the paper's).

    A backbone loss that does not read the backbone logits (a pml loss) leaves the backbone
    classifier out of the objective; its logits then enter ``total`` times 0, so that every
    parameter takes part in the backward pass (DistributedDataParallel requires it) while the value
    and every other gradient stay the same.
    """

    def __init__(self, temperature: float = 1.0, label_smoothing: float = 0.1, backbone_weight: float = 1.0,
                 mpn_weight: float = 1.0, backbone_loss: Optional[BackboneLoss] = None):
        super().__init__()
        self.temperature = temperature
        self.backbone_weight = backbone_weight
        self.mpn_weight = mpn_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.backbone_loss = backbone_loss if backbone_loss is not None else BackboneCrossEntropy(
            temperature, label_smoothing)

    @classmethod
    def from_config(cls, cfg, num_classes: Optional[int] = None, embedding_dim: Optional[int] = None) -> "IntraBatchLoss":
        """The configured objective; ``num_classes`` (the training classes) and ``embedding_dim``
        (default ``model.embedding_dim``) size the losses with proxies."""
        return cls(cfg.loss.temperature, cfg.loss.label_smoothing, cfg.loss.backbone_weight, cfg.loss.mpn_weight,
                   build_backbone_loss(cfg, num_classes, embedding_dim))

    @property
    def reads_embeddings(self) -> bool:
        """Whether :meth:`forward` needs ``embeddings`` (the backbone loss is a metric loss)."""
        return self.backbone_loss.reads_embeddings

    def forward(self, labels: torch.Tensor, backbone_logits: torch.Tensor,
                mpn_logits: Optional[torch.Tensor] = None,
                embeddings: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Returns ``{"backbone": ..., "mpn": ... (when given), "total": ...}`` (unweighted terms)."""
        terms = {"backbone": self.backbone_loss(labels, embeddings, backbone_logits)}
        total = self.backbone_weight * terms["backbone"]
        if not self.backbone_loss.reads_logits:  # the unused classifier in the graph, with gradient 0
            total = total + 0.0 * backbone_logits.float().sum()
        if mpn_logits is not None:
            terms["mpn"] = self.cross_entropy(mpn_logits.float() / self.temperature, labels)
            total = total + self.mpn_weight * terms["mpn"]
        terms["total"] = total
        return terms


def build_loss(cfg, num_classes: Optional[int] = None, embedding_dim: Optional[int] = None) -> IntraBatchLoss:
    """The trainer's loss builder: :meth:`IntraBatchLoss.from_config`."""
    return IntraBatchLoss.from_config(cfg, num_classes, embedding_dim)

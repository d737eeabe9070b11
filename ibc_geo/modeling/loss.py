"""The training objective of METHOD.md §1.4.

.. math::
    \\mathcal{L} = w_b \\, \\mathrm{CE}_\\epsilon\\!\\left(\\frac{z^{b}}{T}, y\\right)
                 + w_m \\, \\mathrm{CE}_\\epsilon\\!\\left(\\frac{z^{m}}{T}, y\\right)

with :math:`\\mathrm{CE}_\\epsilon` the label-smoothed cross-entropy (``torch.nn.CrossEntropyLoss``
with ``label_smoothing``), :math:`z^b` the backbone logits, :math:`z^m` the MPN logits and
:math:`T` the temperature.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


class IntraBatchLoss(nn.Module):
    """Weighted label-smoothed cross-entropies on backbone and MPN logits, both divided by T.

    Args:
        temperature (float): logits are divided by it (default: ``1.0``).
        label_smoothing (float): :math:`\\epsilon` (default: ``0.1``).
        backbone_weight (float): :math:`w_b` (default: ``1.0``).
        mpn_weight (float): :math:`w_m` (default: ``1.0``).
    """

    def __init__(self, temperature: float = 1.0, label_smoothing: float = 0.1, backbone_weight: float = 1.0,
                 mpn_weight: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.backbone_weight = backbone_weight
        self.mpn_weight = mpn_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    @classmethod
    def from_config(cls, cfg) -> "IntraBatchLoss":
        return cls(cfg.loss.temperature, cfg.loss.label_smoothing, cfg.loss.backbone_weight, cfg.loss.mpn_weight)

    def forward(self, labels: torch.Tensor, backbone_logits: torch.Tensor,
                mpn_logits: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Returns ``{"backbone": ..., "mpn": ... (when given), "total": ...}`` (unweighted terms)."""
        terms = {"backbone": self.cross_entropy(backbone_logits.float() / self.temperature, labels)}
        total = self.backbone_weight * terms["backbone"]
        if mpn_logits is not None:
            terms["mpn"] = self.cross_entropy(mpn_logits.float() / self.temperature, labels)
            total = total + self.mpn_weight * terms["mpn"]
        terms["total"] = total
        return terms

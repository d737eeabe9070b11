"""``threshold``: edges whose weight exceeds a threshold; self loops always kept."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("threshold")
class ThresholdTopology(Topology):
    r"""Batch graph of the pairs whose edge weight exceeds ``threshold``, plus all self loops.

    .. math::
        \mathcal{N}(i) = \{i\} \cup \{j : \max(0, S_{ij}) > t\}

    Self loops are kept whatever ``t`` is, so no node is isolated.

    Args:
        threshold (float, optional): The threshold :math:`t` on the edge weight.
            (default: ``0.5``)
        similarity (str, optional): Edge weight, ``"correlation"`` or ``"cosine"``.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, E)`, ``data.edge_attr`` :math:`(E,)`,
          :math:`B \le E \le B^2`
    """

    uses = ("graph.threshold", "graph.similarity")

    def __init__(self, threshold: float = 0.5, similarity: str = "correlation") -> None:
        super().__init__(similarity)
        self.threshold = float(threshold)

    @classmethod
    def from_config(cls, cfg: Any) -> "ThresholdTopology":
        return cls(threshold=cfg.graph.threshold, similarity=cfg.graph.similarity)

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        mask = sim.clamp_min(0) > self.threshold
        mask.fill_diagonal_(True)
        return mask

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, {super().extra_repr()}"

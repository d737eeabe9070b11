"""``full``: the paper's default batch graph, every node receives from every node (self included)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("full")
class FullTopology(Topology):
    r"""Fully connected batch graph with self loops: all :math:`B^2` directed edges.

    .. math::
        \mathcal{N}(i) = \{1, \dots, B\}, \qquad w_{j \to i} = \max(0, S_{ij})

    Args:
        similarity (str, optional): Edge weight, ``"correlation"`` or ``"cosine"``.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, B^2)`, ``data.edge_attr`` :math:`(B^2,)`
    """

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        return torch.ones_like(sim, dtype=torch.bool)

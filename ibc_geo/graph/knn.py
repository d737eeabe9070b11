"""``knn``: each node receives edges from its ``k`` most similar nodes, itself included."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("knn")
class KNNTopology(Topology):
    r"""k-nearest-neighbour batch graph by similarity; every in-degree is exactly ``k``.

    .. math::
        \mathcal{N}(i) = \{i\} \cup \operatorname{top}_{k-1}\{S_{ij} : j \neq i\}

    The node itself always counts as one of its ``k`` neighbours (even when a degenerate
    embedding makes its self-similarity 0); ties are broken by :func:`torch.topk`.

    Args:
        k (int, optional): In-degree of every node, itself included; ``1 <= k <= B``.
            (default: ``10``)
        similarity (str, optional): Neighbour similarity and edge weight, ``"correlation"`` or
            ``"cosine"``. (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, Bk)`, ``data.edge_attr`` :math:`(Bk,)`
    """

    uses = ("graph.k", "graph.similarity")

    def __init__(self, k: int = 10, similarity: str = "correlation") -> None:
        super().__init__(similarity)
        if k < 1:
            raise ValueError(f"topology 'knn': k must be >= 1, got {k}")
        self.k = int(k)

    @classmethod
    def from_config(cls, cfg: Any) -> "KNNTopology":
        return cls(k=cfg.graph.k, similarity=cfg.graph.similarity)

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        B = sim.size(0)
        if self.k > B:
            raise ValueError(f"topology 'knn': k = {self.k} exceeds the batch size {B}")
        score = sim.clone()
        score.fill_diagonal_(float("inf"))  # itself first, always
        nbr = score.topk(self.k, dim=1).indices
        return torch.zeros_like(sim, dtype=torch.bool).scatter_(1, nbr, True)

    def extra_repr(self) -> str:
        return f"k={self.k}, {super().extra_repr()}"

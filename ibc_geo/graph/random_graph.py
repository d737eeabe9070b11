"""``random``: each node receives from ``k`` uniformly random other nodes plus itself."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("random")
class RandomTopology(Topology):
    r"""Random batch graph, drawn afresh at every call; every in-degree is exactly ``k + 1``.

    .. math::
        \mathcal{N}(i) = \{i\} \cup R_i, \qquad
        R_i \sim \operatorname{Uniform}\{R \subseteq \{1..B\} \setminus \{i\} : |R| = k\}

    The draw uses the topology's own CPU :class:`torch.Generator` seeded with ``seed``, so two
    instances with the same seed produce the same sequence of graphs and the global RNG is left
    untouched; :meth:`state_dict` / :meth:`load_state_dict` carry the generator state so that a
    resumed run draws the same next graph.

    Args:
        k (int, optional): Random neighbours per node besides itself; ``1 <= k < B``.
            (default: ``10``)
        seed (int, optional): Seed of the generator. (default: ``0``)
        similarity (str, optional): Edge weight, ``"correlation"`` or ``"cosine"``.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, B(k+1))`, ``data.edge_attr`` :math:`(B(k+1),)`
    """

    uses = ("graph.k", "seed", "graph.similarity")

    def __init__(self, k: int = 10, seed: int = 0, similarity: str = "correlation") -> None:
        super().__init__(similarity)
        if k < 1:
            raise ValueError(f"topology 'random': k must be >= 1, got {k}")
        self.k = int(k)
        self.seed = int(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    @classmethod
    def from_config(cls, cfg: Any) -> "RandomTopology":
        return cls(k=cfg.graph.k, seed=cfg.seed, similarity=cfg.graph.similarity)

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        B = sim.size(0)
        if self.k >= B:
            raise ValueError(f"topology 'random': k = {self.k} needs at least k + 1 = {self.k + 1} "
                             f"nodes, the batch has {B}")
        # The k smallest of i.i.d. uniform keys form a uniform random k-subset; the diagonal is
        # excluded by an infinite key and added back as the self loop.
        keys = torch.rand(B, B, generator=self.generator)
        keys.fill_diagonal_(float("inf"))
        nbr = keys.topk(self.k, dim=1, largest=False).indices
        mask = torch.zeros(B, B, dtype=torch.bool).scatter_(1, nbr, True)
        mask.fill_diagonal_(True)
        return mask.to(sim.device)

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"k={self.k}, seed={self.seed}, {super().extra_repr()}"

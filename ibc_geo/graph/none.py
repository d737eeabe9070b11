"""``none``: no batch graph; the model skips the message passing network (plain CE baseline)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch_geometric.data import Data

from ibc_geo.graph.base import Topology, register_topology


@register_topology("none")
class NoTopology(Topology):
    r"""The empty graph: :math:`\mathcal{N}(i) = \emptyset`, ``message_passing = False``.

    The model reads ``message_passing`` and returns the backbone embedding unchanged; the empty
    ``edge_index`` is set only so that downstream code sees a well-formed graph.

    Args:
        similarity (str, optional): Unused; kept for a uniform constructor.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, 0)`, ``data.edge_attr`` :math:`(0,)`
    """

    uses = ()

    message_passing = False

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        return torch.zeros_like(sim, dtype=torch.bool)

    def forward(self, data: Data) -> Data:
        device = data.x.device if data.x is not None else None
        dtype = data.x.dtype if data.x is not None else torch.get_default_dtype()
        data.edge_index = torch.empty(2, 0, dtype=torch.long, device=device)
        data.edge_attr = torch.empty(0, dtype=dtype, device=device)
        return data

"""``self``: self loops only, the control that isolates what attention over other nodes adds."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("self")
class SelfLoopTopology(Topology):
    r"""Every node receives exactly one edge, from itself: :math:`\mathcal{N}(i) = \{i\}`.

    With a single incoming edge the attention coefficient is 1, so the attention layer reduces to
    :math:`\mathbf{W}_o \mathbf{W}_v x_i` (plus biases): an MLP with the MPN's parameters.

    Args:
        similarity (str, optional): Edge weight, ``"correlation"`` or ``"cosine"``.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`
        - **output:** ``data.edge_index`` :math:`(2, B)`, ``data.edge_attr`` :math:`(B,)`
    """

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        return torch.eye(sim.size(0), dtype=torch.bool, device=sim.device)

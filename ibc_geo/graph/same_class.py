"""``same_class``: the label oracle, edges exactly among same-label pairs (training time only)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ibc_geo.graph.base import Topology, register_topology


@register_topology("same_class")
class SameClassTopology(Topology):
    r"""Edges between every pair with the same label, self loops included.

    .. math::
        \mathcal{N}(i) = \{j : y_j = y_i\}

    An upper-bound control for the learned attention: it needs ``data.y`` and raises a
    ``ValueError`` naming the topology when labels are missing (e.g. at test time).

    Args:
        similarity (str, optional): Edge weight, ``"correlation"`` or ``"cosine"``.
            (default: ``"correlation"``)

    Shapes:
        - **input:** ``data.x`` :math:`(B, F)`, ``data.y`` :math:`(B,)`
        - **output:** ``data.edge_index`` :math:`(2, \sum_c n_c^2)`, ``data.edge_attr`` likewise
    """

    needs_labels = True

    def select(self, sim: Tensor, y: Optional[Tensor]) -> Tensor:
        y = y.view(-1).to(sim.device)
        if y.numel() != sim.size(0):
            raise ValueError(f"topology 'same_class': {y.numel()} labels for {sim.size(0)} nodes")
        return y[:, None] == y[None, :]

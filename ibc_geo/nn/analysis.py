r"""Per-node statistics of attention weights, for logging what the attention learned.

Both take the ``(edge_index, alpha)`` pair returned by :class:`IntraBatchAttention` (``alpha`` of
shape ``(E, H)`` or ``(E,)``) and return one value per node, averaged over heads. A node without
incoming edges gets 0 from both (an empty sum); average over nodes with in-degree > 0 if the graph
can have isolated nodes.
"""
from __future__ import annotations

from torch import Tensor
from torch_geometric.utils import scatter


def _per_head(alpha: Tensor) -> Tensor:
    return alpha.unsqueeze(-1) if alpha.dim() == 1 else alpha


def attention_entropy(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    r"""Entropy (nats) of each node's attention distribution, mean over heads.

    .. math::
        \mathcal{H}_i = \frac{1}{H} \sum_{h=1}^{H} -\sum_{j \in \mathcal{N}(i)}
            \alpha_{ij}^{(h)} \log \alpha_{ij}^{(h)} \qquad (0 \log 0 = 0)

    Uniform attention over :math:`n` neighbours gives :math:`\log n`; attending to one gives 0.

    Args:
        edge_index (torch.Tensor): Edge indices (row 1 = target).
        alpha (torch.Tensor): Attention coefficients per edge (and head).
        num_nodes (int): Number of nodes :math:`N`.

    Shapes:
        - **input:** :math:`(2, E)`, :math:`(E, H)` or :math:`(E,)`
        - **output:** :math:`(N,)`
    """
    alpha = _per_head(alpha)
    plogp = alpha * alpha.clamp_min(1e-30).log()
    ent = -scatter(plogp, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum")
    return ent.mean(dim=-1)


def same_class_attention_share(edge_index: Tensor, alpha: Tensor, y: Tensor) -> Tensor:
    r"""Share of each node's attention mass on sources of its own class, mean over heads.

    .. math::
        s_i = \frac{1}{H} \sum_{h=1}^{H} \sum_{j \in \mathcal{N}(i)}
            \alpha_{ij}^{(h)} \, [\,y_j = y_i\,]

    Args:
        edge_index (torch.Tensor): Edge indices (row 0 = source, row 1 = target).
        alpha (torch.Tensor): Attention coefficients per edge (and head), summing to 1 per target.
        y (torch.Tensor): Node labels.

    Shapes:
        - **input:** :math:`(2, E)`, :math:`(E, H)` or :math:`(E,)`, :math:`(N,)`
        - **output:** :math:`(N,)` in :math:`[0, 1]`
    """
    alpha = _per_head(alpha)
    src, dst = edge_index[0], edge_index[1]
    same = (y[src] == y[dst]).to(alpha.dtype).unsqueeze(-1)
    share = scatter(alpha * same, dst, dim=0, dim_size=y.numel(), reduce="sum")
    return share.mean(dim=-1)

r"""Per-node statistics of attention weights, for logging what the attention learned.

All take the ``(edge_index, alpha)`` pair returned by :class:`IntraBatchAttention` (``alpha`` of
shape ``(E, H)`` or ``(E,)``) and return one value per node, averaged over heads. A node without
incoming edges gets 0 (an empty sum); average over nodes with in-degree > 0 if the graph can have
isolated nodes. With the attention sink the coefficients of a node sum to :math:`m_i < 1`
(:func:`attention_mass`); entropy and same-class share are then those of the node's attention
*over nodes*, :math:`\alpha_{ij} / m_i`, so that they compare with uniform attention over
:math:`\mathcal{N}(i)` (entropy :math:`\ln |\mathcal{N}(i)|`, share = the same-class fraction of
:math:`\mathcal{N}(i)`) whatever the softmax.
"""
from __future__ import annotations

from torch import Tensor
from torch_geometric.utils import scatter


def _per_head(alpha: Tensor) -> Tensor:
    return alpha.unsqueeze(-1) if alpha.dim() == 1 else alpha


def _over_nodes(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    """``alpha`` renormalised to sum to 1 over each node's edges (unchanged for a plain softmax)."""
    mass = scatter(alpha, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum")
    return alpha / mass.clamp_min(1e-30).index_select(0, edge_index[1])


def attention_mass(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    r"""Total attention each node pays to nodes, mean over heads:
    :math:`m_i = \frac{1}{H} \sum_h \sum_{j \in \mathcal{N}(i)} \alpha_{ij}^{(h)}`; 1 for the plain
    softmax, :math:`1 - m_i` is what the sink takes.

    Shapes:
        - **input:** :math:`(2, E)`, :math:`(E, H)` or :math:`(E,)`
        - **output:** :math:`(N,)` in :math:`[0, 1]`
    """
    alpha = _per_head(alpha)
    return scatter(alpha, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum").mean(dim=-1)


def attention_entropy(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    r"""Entropy (nats) of each node's attention distribution over nodes, mean over heads.

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
    alpha = _over_nodes(edge_index, _per_head(alpha), num_nodes)
    plogp = alpha * alpha.clamp_min(1e-30).log()
    ent = -scatter(plogp, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum")
    return ent.mean(dim=-1)


def attention_logit_std(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    r"""Within-row standard deviation of the attention logits, mean over heads: how far the
    softmax is from flat (the saddle of docs/METHOD.md §6 has it near 0).

    .. math::
        \sigma_i = \frac{1}{H} \sum_{h=1}^{H} \sqrt{\frac{1}{|\mathcal{N}(i)|}
            \sum_{j \in \mathcal{N}(i)} \big(s_{ij}^{(h)} - \bar s_i^{(h)}\big)^2}

    read back from the coefficients: for the plain softmax and for the sink alike,
    :math:`\log \alpha_{ij} = s_{ij} - c_i` with :math:`c_i` the same for every edge of node
    :math:`i` (the log of its denominator), so the spread of :math:`\log \alpha_{ij}` over a row
    is exactly that of the logits :math:`s_{ij}`. A coefficient that underflowed to 0 counts as
    :math:`\log 10^{-30}`, so a row with logit spreads beyond about 60 is under-reported
    (population std, ``1 / |N(i)|``; 0 for a node with one or no incoming edge).

    Shapes:
        - **input:** :math:`(2, E)`, :math:`(E, H)` or :math:`(E,)`
        - **output:** :math:`(N,)`
    """
    dst = edge_index[1]
    logit = _per_head(alpha).double().clamp_min(1e-30).log()
    count = scatter(logit.new_ones(dst.numel()), dst, dim=0, dim_size=num_nodes, reduce="sum").clamp_min(1.0)
    mean = scatter(logit, dst, dim=0, dim_size=num_nodes, reduce="sum") / count.unsqueeze(-1)
    var = scatter((logit - mean.index_select(0, dst)) ** 2, dst, dim=0, dim_size=num_nodes, reduce="sum")
    return (var / count.unsqueeze(-1)).sqrt().mean(dim=-1).to(alpha.dtype)


def same_class_attention_share(edge_index: Tensor, alpha: Tensor, y: Tensor) -> Tensor:
    r"""Share of each node's attention over nodes that goes to sources of its own class, mean over heads.

    .. math::
        s_i = \frac{1}{H} \sum_{h=1}^{H} \sum_{j \in \mathcal{N}(i)}
            \frac{\alpha_{ij}^{(h)}}{\sum_{k \in \mathcal{N}(i)} \alpha_{ik}^{(h)}} \, [\,y_j = y_i\,]

    Args:
        edge_index (torch.Tensor): Edge indices (row 0 = source, row 1 = target).
        alpha (torch.Tensor): Attention coefficients per edge (and head).
        y (torch.Tensor): Node labels.

    Shapes:
        - **input:** :math:`(2, E)`, :math:`(E, H)` or :math:`(E,)`, :math:`(N,)`
        - **output:** :math:`(N,)` in :math:`[0, 1]`
    """
    alpha = _over_nodes(edge_index, _per_head(alpha), y.numel())
    src, dst = edge_index[0], edge_index[1]
    same = (y[src] == y[dst]).to(alpha.dtype).unsqueeze(-1)
    share = scatter(alpha * same, dst, dim=0, dim_size=y.numel(), reduce="sum")
    return share.mean(dim=-1)


def attention_statistics(edge_index: Tensor, alpha: Tensor, y: Tensor, num_nodes: int) -> dict:
    r"""One layer's attention on one labelled graph, means over the nodes with incoming edges, next
    to what uniform attention over the same edges scores: ``entropy`` (nats) and
    ``entropy_uniform`` (:math:`\ln |\mathcal{N}(i)|`), ``same_class`` and ``same_class_uniform``
    (chance: the same-class fraction of :math:`\mathcal{N}(i)`; a self loop counts as same-class),
    ``self`` and ``self_uniform`` (the share that stays on the node's own self loop, so that
    ``same_class - self`` is what goes to *other* same-class nodes), ``logit_std``
    (:func:`attention_logit_std`; 0 for uniform) and ``mass_on_nodes`` (:func:`attention_mass`;
    below 1 with the sink). Plain floats, for logs and ``metrics.json``."""
    src, dst = edge_index[0], edge_index[1]
    degree = scatter(alpha.new_ones(dst.numel()).double(), dst, dim=0, dim_size=num_nodes, reduce="sum")
    same = scatter((y[src] == y[dst]).double(), dst, dim=0, dim_size=num_nodes, reduce="sum")
    loops = scatter((src == dst).double(), dst, dim=0, dim_size=num_nodes, reduce="sum")
    has = degree > 0
    over_nodes = _over_nodes(edge_index, _per_head(alpha), num_nodes)
    on_self = scatter(over_nodes * (src == dst).to(alpha.dtype).unsqueeze(-1), dst, dim=0, dim_size=num_nodes,
                      reduce="sum").mean(dim=-1)

    def mean(per_node: Tensor) -> float:
        return float(per_node.double()[has].mean())

    return {
        "entropy": mean(attention_entropy(edge_index, alpha, num_nodes)),
        "entropy_uniform": float(degree[has].log().mean()),
        "same_class": mean(same_class_attention_share(edge_index, alpha, y)),
        "same_class_uniform": float((same[has] / degree[has]).mean()),
        "self": mean(on_self),
        "self_uniform": float((loops[has] / degree[has]).mean()),
        "logit_std": mean(attention_logit_std(edge_index, alpha, num_nodes)),
        "mass_on_nodes": mean(attention_mass(edge_index, alpha, num_nodes)),
    }

r"""The dense path of :class:`~ibc_geo.nn.IntraBatchAttention`, and the sink softmax of both paths.

* :func:`dense_plan`: whether a graph runs densely, and its :math:`N \times N` boolean mask;
* :func:`dense_attention`: one :func:`torch.nn.functional.scaled_dot_product_attention` (SDPA)
  call over all nodes (unmasked on the full graph), with the zero-logit sink as one extra all-zero
  key and value, and explicit coefficients when they are asked for;
* :func:`sdpa_by_heads`: SDPA a few heads at a time with activation checkpointing (bounded memory);
* :func:`sink_softmax`: the edge-wise softmax with the sink, for the sparse path.

Every function is TorchScript-compatible except :func:`sdpa_by_heads` (``torch.jit.unused``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import is_sparse, scatter


def sink_softmax(src: Tensor, index: Tensor, num_nodes: Optional[int] = None) -> Tensor:
    r"""Softmax over the edges of each target node with one extra zero logit, the "sink":

    .. math::
        \alpha_{ij} = \frac{\exp(s_{ij})}{1 + \sum_{k \in \mathcal{N}(i)} \exp(s_{ik})}

    computed stably as :math:`\exp(s_{ij} - m_i) / (e^{-m_i} + \sum_k \exp(s_{ik} - m_i))` with
    :math:`m_i = \max(0, \max_k s_{ik})` (the official code's ``net/utils.py`` ``softmax``). The
    coefficients of a node sum to less than 1: it may also attend to "nothing".

    Args:
        src (torch.Tensor): Logits :math:`(E, *)`.
        index (torch.Tensor): Target node of each edge :math:`(E,)`.
        num_nodes (int, optional): Number of target nodes. (default: ``index.max() + 1``)
    """
    if num_nodes is not None:
        N = num_nodes
    else:
        N = int(index.max()) + 1 if index.numel() > 0 else 0
    m = scatter(src.detach(), index, dim=0, dim_size=N, reduce="max").clamp(min=0.0)
    e = (src - m.index_select(0, index)).exp()
    denom = scatter(e, index, dim=0, dim_size=N, reduce="sum") + (-m).exp()
    return e / denom.index_select(0, index)


def dense_plan(edge_index: Tensor, num_nodes: int, path: str, min_density: float,
               max_nodes: int) -> Tuple[bool, Optional[Tensor]]:
    r"""``(use_dense, mask)``: whether the dense path runs for ``path`` (``"auto"``, ``"dense"``,
    ``"sparse"``) and its ``(N, N)`` boolean mask (``mask[i, j]`` = edge ``j -> i``; ``None`` for
    the full graph, where SDPA runs unmasked).

    ``"auto"`` goes dense for the full graph and for graphs with at least ``min_density * N^2``
    edges (and at most ``max_nodes`` nodes); deciding costs one :math:`O(E)` scatter into an
    :math:`N^2` boolean mask, integer work outside autograd, and only when
    :math:`E \ge \rho N^2`. A graph with duplicate edges never goes dense (a mask cannot count an
    edge twice); ``"dense"`` refuses it.
    """
    if path == "sparse" or not isinstance(edge_index, Tensor) or is_sparse(edge_index):
        if path == "dense":
            raise ValueError("attention_path='dense' needs edge_index as a (2, E) tensor")
        return False, None
    N, E = num_nodes, edge_index.size(1)
    if path == "auto":
        if N == 0 or E == 0 or N > max_nodes:
            return False, None
        if E != N * N and E < min_density * N * N:
            return False, None
    flat = edge_index[1] * N + edge_index[0]
    mask = torch.zeros(N * N, dtype=torch.bool, device=edge_index.device)
    mask.index_fill_(0, flat, True)
    distinct = int(mask.sum())
    if distinct != E:
        if path == "dense":
            raise ValueError(
                f"attention_path='dense' needs a graph without duplicate edges; edge_index has "
                f"{E} edges but {distinct} distinct ones (use attention_path='sparse')")
        return False, None
    if distinct == N * N:
        return True, None
    return True, mask.view(N, N)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], p: float,
          scale: Optional[float] = None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)


@torch.jit.unused
def sdpa_by_heads(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], p: float, chunk_bytes: int,
                  use_checkpoint: Optional[bool] = None, scale: Optional[float] = None) -> Tensor:
    """SDPA over chunks of heads of at most ``chunk_bytes`` of scores each; with gradients, each
    chunk is checkpointed (recomputed in backward with the same dropout)."""
    per_head = q.size(2) * k.size(2) * q.element_size()
    step = max(1, chunk_bytes // per_head)
    if use_checkpoint is None:
        use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for h in range(0, q.size(1), step):
        chunk = (q[:, h:h + step], k[:, h:h + step], v[:, h:h + step])
        if use_checkpoint:
            outs.append(checkpoint(_sdpa, *chunk, mask, p, scale, use_reentrant=False))
        else:
            outs.append(_sdpa(*chunk, mask, p, scale))
    return torch.cat(outs, dim=1)


def dense_attention(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor],
                    edge_index: Tensor, need_alpha: bool, sink: bool, p: float,
                    chunk_bytes: int, scale: Optional[float] = None) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Attention of every node over the keys its ``mask`` row allows (all keys when ``mask`` is
    ``None``), queries / keys / values of shape :math:`(N, H, C)`; returns the :math:`(N, H, C)`
    messages and, when ``need_alpha``, the pre-dropout coefficients per edge :math:`(E, H)` in
    ``edge_index`` order (by an explicit softmax, as SDPA does not return them). Dropout ``p``
    acts on the coefficients (pass 0 outside training). With ``sink``, one more key of logit 0
    and zero value is attended by every node. A node without keys (no sink) gets the zero message.
    The logits are :math:`\langle q, k \rangle` times ``scale`` (``None``: SDPA's default
    :math:`1 / \sqrt{C}`).
    """
    N = query.size(0)
    q = query.transpose(0, 1).unsqueeze(0)  # (1, H, N, C)
    k = key.transpose(0, 1).unsqueeze(0)
    v = value.transpose(0, 1).unsqueeze(0)
    isolated: Optional[Tensor] = None
    if sink:
        k = torch.cat([k, k.new_zeros(k.size(0), k.size(1), 1, k.size(3))], dim=2)
        v = torch.cat([v, v.new_zeros(v.size(0), v.size(1), 1, v.size(3))], dim=2)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(N, 1)], dim=1)
    elif mask is not None:
        has_in = mask.any(dim=1)
        if not bool(has_in.all()):
            # A row without any key makes softmax 0/0; attend to itself, then zero the row.
            isolated = ~has_in
            mask = mask | torch.diag_embed(isolated)
    alpha: Optional[Tensor] = None
    if not need_alpha:
        big = q.size(1) * N * k.size(2) * q.element_size() > chunk_bytes
        if big and not torch.jit.is_scripting():
            out = sdpa_by_heads(q, k, v, mask, p, chunk_bytes, scale=scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
    else:
        if scale is None:
            score = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        else:
            score = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            score = score.masked_fill(~mask, float("-inf"))
        attn = score.softmax(dim=-1)  # (1, H, N, N), or (1, H, N, N + 1) with the sink
        alpha = attn[0][:, edge_index[1], edge_index[0]].t()  # (E, H)
        out = F.dropout(attn, p=p, training=p > 0) @ v
    out = out.squeeze(0).transpose(0, 1)  # (N, H, C)
    if isolated is not None:
        out = out.masked_fill(isolated.view(N, 1, 1), 0.0)
    return out, alpha

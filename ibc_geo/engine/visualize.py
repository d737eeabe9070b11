"""The matrices behind the TensorBoard pictures (:mod:`ibc_geo.engine.figures`): a batch's dense
attention and cosine similarity, and the node order that groups classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_order(labels: torch.Tensor) -> torch.Tensor:
    """Node order that groups classes (stable, so the order within a class is kept)."""
    return torch.sort(labels.cpu(), stable=True).indices


def dense_attention(edge_index: torch.Tensor, alpha: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``A[i, j]`` = attention of target i on source j, averaged over heads; 0 where no edge."""
    dense = torch.zeros(num_nodes, num_nodes, dtype=torch.float32)
    weights = alpha.detach().float().cpu()
    weights = weights.mean(dim=-1) if weights.dim() > 1 else weights
    src, dst = edge_index.cpu()
    dense.index_put_((dst, src), weights, accumulate=True)
    return dense


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.detach().float().cpu(), dim=-1)
    return x @ x.t()

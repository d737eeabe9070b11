"""Pictures for TensorBoard: a batch's attention and similarity matrices, nodes sorted by class."""
from __future__ import annotations

from typing import Optional

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


def as_image(matrix: torch.Tensor, order: Optional[torch.Tensor] = None, low: float = None,
             high: float = None) -> torch.Tensor:
    """A ``[1, N, N]`` picture in [0, 1] (``low``/``high`` fix the colour scale, else min/max)."""
    if order is not None:
        matrix = matrix[order][:, order]
    low = float(matrix.min()) if low is None else low
    high = float(matrix.max()) if high is None else high
    return ((matrix - low) / max(high - low, 1e-12)).clamp(0, 1).unsqueeze(0)

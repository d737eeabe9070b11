"""Dense pairwise similarity of a batch of embeddings, the edge weight of every topology.

``correlation`` (the paper's edge weight) is the Pearson correlation: each vector is centred by
its own mean over the feature dimension, then the cosine of the centred vectors is taken.
``cosine`` skips the centring. Both are computed as one dense ``B x B`` matrix product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SIMILARITIES = ("correlation", "cosine")


def pairwise_similarity(x: Tensor, kind: str = "correlation", eps: float = 1e-12) -> Tensor:
    r"""All-pairs similarity :math:`S \in [-1, 1]^{B \times B}` of the rows of ``x``.

    .. math::
        S_{ij} = \frac{\langle \tilde{x}_i, \tilde{x}_j \rangle}
                      {\max(\lVert \tilde{x}_i \rVert, \epsilon)\,\max(\lVert \tilde{x}_j \rVert, \epsilon)},
        \qquad \tilde{x}_i = x_i - \bar{x}_i \mathbf{1} \text{ (correlation) or } x_i \text{ (cosine)}

    A constant (correlation) or zero vector has similarity 0 to everything, itself included.

    Args:
        x (torch.Tensor): Node features.
        kind (str, optional): ``"correlation"`` or ``"cosine"``. (default: ``"correlation"``)
        eps (float, optional): Lower bound of a norm. (default: ``1e-12``)

    Shapes:
        - **input:** :math:`(B, F)`
        - **output:** :math:`(B, B)`, symmetric
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; allowed: {', '.join(SIMILARITIES)}")
    if x.dim() != 2:
        raise ValueError(f"expected node features of shape (B, F), got {tuple(x.shape)}")
    if kind == "correlation":
        x = x - x.mean(dim=1, keepdim=True)
    x = F.normalize(x, dim=1, eps=eps)
    return x @ x.t()

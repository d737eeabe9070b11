r"""The message passing network: ``L`` :class:`IntraBatchLayer` s, a BatchNorm neck and a classifier."""
from __future__ import annotations

from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

from ibc_geo.nn.layer import IntraBatchLayer


class MessagePassingNetwork(torch.nn.Module):
    r"""Refines the batch embeddings with the batch graph, then classifies them (METHOD.md §1.3-1.4).

    .. math::
        h^{(0)} = x, \qquad h^{(l+1)} = \operatorname{IntraBatchLayer}_l(h^{(l)}, \mathcal{E}),
        \qquad z = \mathbf{W}_c \, \operatorname{BN}(h^{(L)})

    The BatchNorm1d neck has its bias frozen at zero (``requires_grad = False``), the classifier
    :math:`\mathbf{W}_c : d \to C` has no bias (Xavier-uniform weight).

    Args:
        channels (int): Embedding size :math:`d`.
        num_classes (int): Training classes :math:`C`.
        num_layers (int, optional): Layers :math:`L`. (default: ``1``)
        heads (int, optional): Attention heads :math:`H` per layer. (default: ``2``)
        dropout (float, optional): Dropout of every layer. (default: ``0.1``)
        attention_path (str, optional): ``"auto"``, ``"dense"`` or ``"sparse"``.
            (default: ``"auto"``)

    Shapes:
        - **input:** embeddings :math:`(B, d)`, edge indices :math:`(2, E)`
        - **output:** ``(h, logits)`` of shapes :math:`(B, d)`, :math:`(B, C)`; with
          ``return_attention_weights=True`` also a list of ``L`` pairs
          ``(edge_index (2, E), alpha (E, H))``, one per layer
    """

    def __init__(self, channels: int, num_classes: int, num_layers: int = 1, heads: int = 2,
                 dropout: float = 0.1, attention_path: str = "auto") -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = torch.nn.ModuleList(
            IntraBatchLayer(channels, heads, dropout, attention_path) for _ in range(num_layers))
        self.neck = torch.nn.BatchNorm1d(channels)
        self.neck.bias.requires_grad_(False)
        self.classifier = torch.nn.Linear(channels, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        self.neck.reset_parameters()  # weight 1, bias 0 (frozen)
        torch.nn.init.xavier_uniform_(self.classifier.weight)

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int) -> "MessagePassingNetwork":
        """From ``cfg.model.embedding_dim`` and ``cfg.mpn``."""
        return cls(cfg.model.embedding_dim, num_classes, num_layers=cfg.mpn.num_layers,
                   heads=cfg.mpn.num_heads, dropout=cfg.mpn.dropout,
                   attention_path=cfg.mpn.attention_path)

    def forward(self, x: Tensor, edge_index: Tensor, return_attention_weights: bool = False
                ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, List[Tuple[Tensor, Tensor]]]]:
        attention: List[Tuple[Tensor, Tensor]] = []
        h = x
        for layer in self.layers:
            if return_attention_weights:
                h, att = layer(h, edge_index, return_attention_weights=True)
                attention.append(att)
            else:
                h = layer(h, edge_index)
        logits = self.classifier(self.neck(h))
        if return_attention_weights:
            return h, logits, attention
        return h, logits

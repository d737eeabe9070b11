r"""The message passing network: ``L`` :class:`IntraBatchLayer` s, a BatchNorm neck and a classifier."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ibc_geo.nn.layer import IntraBatchLayer


class MessagePassingNetwork(torch.nn.Module):
    r"""Refines the batch embeddings with the batch graph, then classifies them (METHOD.md §1.3-1.4).

    .. math::
        h^{(0)} = \mathbf{W}_{in} \, \gamma \frac{x}{\lVert x \rVert}, \qquad
        h^{(l+1)} = \operatorname{IntraBatchLayer}_l(h^{(l)}, \mathcal{E}), \qquad
        z = \mathbf{W}_c \, \operatorname{BN}(u), \quad
        u = h^{(L)} \ \text{or} \ \big\Vert_{l=1}^{L} h^{(l)}

    where the normalisation (``input_norm``) and its scale :math:`\gamma` (``input_scale``;
    :math:`\sqrt{d}` gives the input the norm of a LayerNorm output), the input projection
    :math:`\mathbf{W}_{in} : d \to d` (``input_proj``, PyTorch's default ``Linear`` init: the
    official ``dim_red``) and the concatenation of all layers' outputs (``concat_layers``,
    :math:`u \in \mathbb{R}^{L d}`) are each optional. The BatchNorm1d neck is Kaiming-initialised
    (weight 1, bias 0) with its bias frozen at zero (``requires_grad = False``); the classifier
    :math:`\mathbf{W}_c` has no bias and is initialised :math:`\mathcal{N}(0, 0.001^2)` (the official
    ``weights_init_classifier``), so the initial logits are near zero and the cross-entropy starts
    at :math:`\ln C`.

    Args:
        channels (int): Embedding size :math:`d`.
        num_classes (int): Training classes :math:`C`.
        num_layers (int, optional): Layers :math:`L`. (default: ``1``)
        heads (int, optional): Attention heads :math:`H` per layer. (default: ``2``)
        dropout (float, optional): Dropout of every layer. (default: ``0.1``)
        attention_path (str, optional): ``"auto"``, ``"dense"`` or ``"sparse"``.
            (default: ``"auto"``)
        sink (bool, optional): Zero-logit sink in every attention softmax. (default: ``False``)
        input_norm (bool, optional): L2-normalise the input embeddings. (default: ``False``)
        input_scale (float, optional): Multiply the normalised input by :math:`\gamma > 0`; only
            with ``input_norm``. (default: ``1.0``)
        input_proj (bool, optional): ``Linear(d, d)`` before the first layer. (default: ``False``)
        concat_layers (bool, optional): The neck and classifier see all layers' outputs
            concatenated (:math:`L d` features). (default: ``False``)
        logits (str, optional): Attention logits of every layer, ``"dot"`` or ``"cosine"``
            (:class:`~ibc_geo.nn.IntraBatchAttention`). (default: ``"dot"``)
        scale_init (float, optional): Initial per-head scale of cosine logits. (default: ``10.0``)
        shared_qk_init (bool, optional): Every layer's key projection starts as its query
            projection. (default: ``False``)

    Shapes:
        - **input:** embeddings :math:`(B, d)`, edge indices :math:`(2, E)`
        - **output:** ``(u, logits)`` of shapes :math:`(B, d)` (:math:`(B, L d)` with
          ``concat_layers``), :math:`(B, C)`; with ``return_attention_weights=True`` also a list
          of ``L`` pairs ``(edge_index (2, E), alpha (E, H))``, one per layer
    """

    def __init__(self, channels: int, num_classes: int, num_layers: int = 1, heads: int = 2,
                 dropout: float = 0.1, attention_path: str = "auto", sink: bool = False,
                 input_norm: bool = False, input_proj: bool = False,
                 concat_layers: bool = False, input_scale: float = 1.0, logits: str = "dot",
                 scale_init: float = 10.0, shared_qk_init: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"input_scale must be a finite number > 0, got {input_scale}")
        if input_scale != 1.0 and not input_norm:
            raise ValueError("input_scale scales the normalised input; it needs input_norm=True")
        self.input_norm = bool(input_norm)
        self.input_scale = float(input_scale)
        self.concat_layers = bool(concat_layers)
        self.input_proj: Optional[torch.nn.Linear] = (
            torch.nn.Linear(channels, channels) if input_proj else None)
        self.layers = torch.nn.ModuleList(
            IntraBatchLayer(channels, heads, dropout, attention_path, sink=sink, logits=logits,
                            scale_init=scale_init, shared_qk_init=shared_qk_init)
            for _ in range(num_layers))
        self.out_channels = channels * num_layers if concat_layers else channels
        self.neck = torch.nn.BatchNorm1d(self.out_channels)
        self.neck.bias.requires_grad_(False)
        self.classifier = torch.nn.Linear(self.out_channels, num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.input_proj is not None:
            self.input_proj.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        torch.nn.init.ones_(self.neck.weight)  # Kaiming init of a BatchNorm: weight 1, bias 0
        torch.nn.init.zeros_(self.neck.bias)
        self.neck.reset_running_stats()
        torch.nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x: Tensor, edge_index: Tensor, return_attention_weights: bool = False
                ) -> Union[Tuple[Tensor, Tensor], Tuple[Tensor, Tensor, List[Tuple[Tensor, Tensor]]]]:
        attention: List[Tuple[Tensor, Tensor]] = []
        h = F.normalize(x, dim=-1) if self.input_norm else x
        if self.input_scale != 1.0:
            h = h * self.input_scale
        if self.input_proj is not None:
            h = self.input_proj(h)
        outputs: List[Tensor] = []
        for layer in self.layers:
            if return_attention_weights:
                h, att = layer(h, edge_index, return_attention_weights=True)
                attention.append(att)
            else:
                h = layer(h, edge_index)
            outputs.append(h)
        u = torch.cat(outputs, dim=-1) if self.concat_layers else h
        logits = self.classifier(self.neck(u))
        if return_attention_weights:
            return u, logits, attention
        return u, logits

    def __repr__(self) -> str:
        a = self.layers[0].attention
        return (f"{self.__class__.__name__}({a.channels}, num_classes={self.classifier.out_features}, "
                f"num_layers={len(self.layers)}, heads={a.heads})")

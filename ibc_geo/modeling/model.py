"""The meta-architecture: backbone -> batch graph -> message passing network (METHOD.md §1-2).

Training: the batch's embeddings :math:`f_i` become a graph (``graph.topology``), the MPN refines
them with the context of the batch, and both the backbone and the MPN classifiers are supervised.
Inference: :meth:`IntraBatchModel.embed` runs the backbone alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch_geometric.data import Data

from ibc_geo.graph import build_topology_from_config
from ibc_geo.modeling.backbone import EmbeddingBackbone
from ibc_geo.nn import MessagePassingNetwork
from ibc_geo.utils.distributed import gather_tensor, gather_with_grad


@dataclass
class ModelOutput:
    """What one training forward pass yields."""

    embeddings: torch.Tensor  # f: backbone embeddings [B, D] (all ranks' when distributed)
    labels: Optional[torch.Tensor]  # the labels of the B nodes (all ranks' when distributed)
    backbone_logits: torch.Tensor  # [B, C]
    graph: Data  # the batch graph (x = f detached, edge_index, edge_attr, y)
    mpn_embeddings: Optional[torch.Tensor] = None  # h: MPN output [B, D]; None without message passing
    mpn_logits: Optional[torch.Tensor] = None  # [B, C]
    attention: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None  # per layer (edge_index, alpha [E, H])


def build_mpn_from_config(cfg, num_classes: int) -> MessagePassingNetwork:
    """The MPN of ``cfg.model.embedding_dim`` and ``cfg.mpn`` (the official recipe by default:
    normalised input, input projection, attention sink; ``mpn.concat_layers`` for Cars; the
    variants beyond the paper: ``mpn.attention_logits``, ``mpn.attention_scale_init``,
    ``mpn.attention_qk_init``, ``mpn.input_scale``)."""
    m = cfg.mpn
    return MessagePassingNetwork(cfg.model.embedding_dim, num_classes, num_layers=m.num_layers,
                                 heads=m.num_heads, dropout=m.dropout, attention_path=m.attention_path,
                                 sink=m.attention_sink, input_norm=m.input_norm, input_proj=m.input_proj,
                                 concat_layers=m.concat_layers, input_scale=m.input_scale,
                                 logits=m.attention_logits, scale_init=m.attention_scale_init,
                                 shared_qk_init=m.attention_qk_init == "shared")


class IntraBatchModel(nn.Module):
    """Backbone, batch-graph topology and MPN, trained end to end.

    Args:
        backbone (EmbeddingBackbone): images -> embeddings and backbone logits.
        topology: a ``ibc_geo.graph`` topology (callable on a ``Data``).
        mpn (MessagePassingNetwork, optional): ``None`` when the topology does no message passing.
    """

    def __init__(self, backbone: EmbeddingBackbone, topology, mpn: Optional[MessagePassingNetwork]):
        super().__init__()
        self.backbone = backbone
        self.topology = topology
        self.mpn = mpn

    @classmethod
    def from_config(cls, cfg, num_classes: int, pretrained: Optional[str] = None) -> "IntraBatchModel":
        """The configured model; ``pretrained`` overrides ``model.pretrained`` (e.g. ``"none"`` when
        a checkpoint's weights replace them anyway)."""
        backbone = EmbeddingBackbone(cfg.model.backbone, num_classes, cfg.model.embedding_dim,
                                     cfg.model.pooling, cfg.model.pretrained if pretrained is None else pretrained,
                                     channels_last=cfg.model.channels_last,
                                     backbone_kwargs=cfg.model.backbone_kwargs)
        topology = build_topology_from_config(cfg)
        mpn = build_mpn_from_config(cfg, num_classes) if topology.message_passing else None
        return cls(backbone, topology, mpn)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The test-time embedding: the backbone alone (not normalised)."""
        return self.backbone.embed(images)

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                return_attention_weights: bool = False, distributed: bool = False) -> ModelOutput:
        """Backbone embeddings and logits; the graph is built on ``f`` detached (its edges carry no
        gradient), the MPN receives ``f`` itself, so its loss trains the backbone too.

        With ``distributed`` (training under ``torch.distributed``), ``images`` are this rank's slice
        of the global batch: the slices' embeddings are all-gathered with autograd and the labels
        gathered, so that graph, MPN and both classifiers see all ``B`` nodes on every rank
        (:mod:`ibc_geo.utils.distributed` says why the gradients are then exact)."""
        f = self.backbone.embed(images)
        if distributed:
            f = gather_with_grad(f)
            labels = None if labels is None else gather_tensor(labels)
        backbone_logits = self.backbone.classify(f)
        graph = self.topology(Data(x=f.detach().float(), y=labels))
        out = ModelOutput(embeddings=f, labels=labels, backbone_logits=backbone_logits, graph=graph)
        if self.mpn is not None:
            result = self.mpn(f, graph.edge_index, return_attention_weights=return_attention_weights)
            out.mpn_embeddings, out.mpn_logits = result[0], result[1]
            if return_attention_weights:
                out.attention = result[2]
        return out

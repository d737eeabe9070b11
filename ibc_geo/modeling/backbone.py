"""The embedding backbone of METHOD.md §1.1, on any trunk of the backbone registry.

.. math::
    f_i = W_e \\, p(x_i) + b_e, \\qquad z_i = W_c f_i + b_c

:math:`p` is the trunk's pooled feature (:mod:`ibc_geo.nn.backbones`: a torchvision ResNet with
global max (the paper) or average pooling over its last feature map, 2048 channels for
ResNet-50/101/152 and 512 for ResNet-18/34; or a timm model's pre-logits feature, e.g. a ViT's CLS
token); ``W_e`` reduces it to the ``embedding_dim``-d embedding ``f_i``, the only output used at
test time; ``W_c`` is the backbone classifier whose logits ``z_i`` enter the backbone cross-entropy.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from ibc_geo.nn.backbones import TORCHVISION_RESNETS, PretrainedWeightsError, backbone_entry

#: The torchvision ResNets (every ``timm/<name>`` is a backbone too: :mod:`ibc_geo.nn.backbones`).
BACKBONES = TORCHVISION_RESNETS

__all__ = ["BACKBONES", "EmbeddingBackbone", "PretrainedWeightsError"]


class EmbeddingBackbone(nn.Module):
    """A trunk of the backbone registry, its pooled feature, the embedding and the classifier.

    Args:
        name (str): ``model.backbone``: ``resnet18|34|50|101|152`` or ``timm/<model>``.
        num_classes (int): classes of the backbone classifier.
        embedding_dim (int, optional): size of the embedding (default: ``512``).
        pooling (str, optional): ``"max"`` (paper), ``"avg"``, or ``"model"`` (a timm model's own,
            e.g. a ViT's CLS token) (default: ``"max"``).
        pretrained (str, optional): ``"imagenet"`` / ``"hub"`` (the entry's published weights),
            ``"none"`` or a local file (``.pth`` / ``.safetensors``) (default: ``"none"``).
        channels_last (bool, optional): run the trunk in ``channels_last`` memory format, several
            times faster for CNNs on CPU and on tensor cores (default: ``True``).
        backbone_kwargs (dict, optional): ``model.backbone_kwargs`` for ``timm.create_model``.

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** embeddings :math:`(B, D)` from :meth:`embed`; logits :math:`(B, C)` from
          :meth:`classify`.
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int = 512, pooling: str = "max",
                 pretrained: str = "none", channels_last: bool = True,
                 backbone_kwargs: Optional[Mapping] = None):
        super().__init__()
        self.name = name
        self.entry = backbone_entry(name)
        self.trunk, self.feature_dim = self.entry.build(pooling, pretrained, dict(backbone_kwargs or {}))
        self.embedding = nn.Linear(self.feature_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)
        self.channels_last = channels_last
        if channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.embedding(self.trunk(images))

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(embeddings)

"""The ResNet embedding backbone of METHOD.md §1.1.

.. math::
    f_i = W_e \\, \\mathrm{pool}(\\mathrm{ResNet}(x_i)) + b_e, \\qquad
    z_i = W_c f_i + b_c

``pool`` is global max pooling (the paper) or average pooling over the last feature map
(2048 channels for ResNet-50/101/152, 512 for ResNet-18/34); ``W_e`` reduces it to the
``embedding_dim``-d embedding ``f_i``, the only output used at test time; ``W_c`` is the
backbone classifier whose logits ``z_i`` enter the backbone cross-entropy.
"""
from __future__ import annotations

import os
import urllib.error

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from ibc_geo.utils.errors import UserError
from ibc_geo.utils.state import state_dict_mismatch

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PretrainedWeightsError(UserError, RuntimeError):
    """ImageNet weights could not be had, or a local state dict does not fit the architecture."""


def imagenet_state_dict(name: str) -> dict:
    """torchvision's ImageNet-1k weights of ``name`` (``IMAGENET1K_V1``, as the paper's code used).

    Downloads into torch's hub cache (``$TORCH_HOME/hub/checkpoints``) unless already there.
    """
    weights = get_model_weights(name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        file = os.path.basename(weights.url)
        raise PretrainedWeightsError(
            f"could not load torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}). "
            f"Offline? On a machine with internet download {weights.url}, copy it here and set "
            f"`model.pretrained /path/to/{file}` (or put it in $TORCH_HOME/hub/checkpoints/), "
            f"or train from scratch with `model.pretrained none`."
        ) from e


def load_local_state_dict(path: str) -> dict:
    """A state dict from ``path`` (plain, or under a ``state_dict``/``model`` key; ``module.`` stripped)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"model.pretrained: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise PretrainedWeightsError(f"model.pretrained: cannot read {path!r} as a torch state dict: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"model.pretrained: {path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trunk_weights(trunk: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into a ResNet trunk; the ImageNet classifier (``fc.*``) is ignored.

    Raises PretrainedWeightsError listing missing, unexpected and mis-shaped keys.
    """
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = state_dict_mismatch(trunk, state)
    if problem:
        raise PretrainedWeightsError(
            f"the weights from {source} do not fit this backbone: {problem}. "
            f"Is it a state dict of the configured model.backbone?"
        )
    trunk.load_state_dict(state, strict=True)


class EmbeddingBackbone(nn.Module):
    """A torchvision ResNet without its classifier, global pooling, embedding and classifier.

    Args:
        name (str): one of ``resnet18|34|50|101|152``.
        num_classes (int): classes of the backbone classifier.
        embedding_dim (int, optional): size of the embedding (default: ``512``).
        pooling (str, optional): ``"max"`` (paper) or ``"avg"`` (default: ``"max"``).
        pretrained (str, optional): ``"imagenet"``, ``"none"`` or a local state dict path
            (default: ``"none"``).
        channels_last (bool, optional): run the ResNet in ``channels_last`` memory format, several
            times faster on CPU and on tensor cores (default: ``True``).

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** embeddings :math:`(B, D)` from :meth:`embed`; logits :math:`(B, C)` from
          :meth:`classify`.
    """

    def __init__(self, name: str, num_classes: int, embedding_dim: int = 512, pooling: str = "max",
                 pretrained: str = "none", channels_last: bool = True):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"model.backbone {name!r} is not one of {', '.join(BACKBONES)}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"model.pooling {pooling!r} is not one of max, avg")
        self.name = name
        trunk = get_model(name, weights=None)
        self.feature_dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
        trunk.avgpool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
        if pretrained == "imagenet":
            load_trunk_weights(trunk, imagenet_state_dict(name), f"torchvision ImageNet weights of {name}")
        elif pretrained not in ("none", "", None):
            load_trunk_weights(trunk, load_local_state_dict(pretrained), repr(pretrained))
        self.trunk = trunk
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

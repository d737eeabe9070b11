r"""The backbone registry: which trunks ``model.backbone`` can name, and what each one carries.

A trunk maps images to a pooled feature :math:`p(x) \in \mathbb{R}^{F}`; the embedding model
(:class:`ibc_geo.modeling.backbone.EmbeddingBackbone`) puts :math:`f = W_e p(x) + b_e` and the
classifier on top, the same for every entry. An entry (:class:`BackboneEntry`) knows

* how to build its trunk (random init, the hub's weights, or a local file) and the feature size F;
* its pooling (``model.pooling``: ``max`` / ``avg`` over the last feature map, or ``model``: the
  model's own, the CLS token for a ViT);
* its preprocessing (:class:`Preprocessing`: mean, std, input size, resize, interpolation), which
  fills ``data.mean``, ``data.std``, ``data.image_size`` and ``data.interpolation`` wherever the
  config leaves them at "the backbone's" (``[]``, ``[]``, ``0``, ``""``);
* the config keys it reads (``uses``), as the graph topologies do.

Entries:

* ``resnet18`` ... ``resnet152``: torchvision's ResNets exactly as the paper's code uses them
  (ImageNet weights ``IMAGENET1K_V1``; max pooling by default; mean/std ImageNet's, 227 px, resize
  256/227, bilinear).
* ``timm/<name>``: any timm model (``timm/vit_small_patch16_224``, ``timm/convnext_tiny``) built with
  ``num_classes=0`` so that its ``forward`` is ``forward_features`` + ``forward_head(pre_logits=True)``;
  ``model.backbone_kwargs`` go to ``timm.create_model`` (e.g. ``{img_size: 64, patch_size: 8}``);
  the preprocessing is the model's pretrained config's (``timm.get_pretrained_cfg``).
"""
from __future__ import annotations

import os
import urllib.error
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import torch
from torch import nn

from ibc_geo.utils.errors import UserError
from ibc_geo.utils.registry import closest
from ibc_geo.utils.state import state_dict_mismatch

__all__ = ["BackboneEntry", "BackboneError", "PretrainedWeightsError", "Preprocessing", "TORCHVISION_RESNETS",
           "TimmEntry", "TorchvisionResNet", "backbone_entry", "load_local_state_dict"]

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM_PREFIX = "timm/"
POOLINGS = ("max", "avg", "model")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(UserError, ValueError):
    """A backbone name, pooling or keyword that no entry can build (the message names it)."""


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be had, or a local file does not fit the architecture."""


@dataclass(frozen=True)
class Preprocessing:
    """What a backbone expects of its input images."""

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    image_size: int  # the training crop and the test centre crop
    crop_pct: float  # test: resize the shorter side to image_size / crop_pct, then centre-crop
    interpolation: str  # "bilinear" | "bicubic" | "nearest"

    def resize_size(self, image_size: int) -> int:
        return int(round(image_size / self.crop_pct))


class BackboneEntry(ABC):
    """One kind of trunk (see the module docstring)."""

    #: The config keys this entry reads.
    uses: Tuple[str, ...] = ("model.backbone", "model.pooling", "model.pretrained", "model.backbone_kwargs")

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def preprocessing(self, kwargs: Mapping) -> Preprocessing:
        """The preprocessing the trunk (and its pretrained weights) expect."""

    @abstractmethod
    def build(self, pooling: str, pretrained: str, kwargs: Mapping) -> Tuple[nn.Module, int]:
        """``(trunk, F)``: ``trunk(images)`` is the pooled ``[B, F]`` feature."""

    def check(self, pooling: str, pretrained: str, kwargs: Mapping) -> None:
        """Raise :class:`BackboneError` naming the key when the entry cannot build this."""
        if pooling not in POOLINGS:
            raise BackboneError(f"model.pooling {pooling!r} is not one of {', '.join(POOLINGS)}")


def load_local_state_dict(path: str) -> dict:
    """A state dict from ``path``: ``.safetensors``, or a torch file (plain, or under a
    ``state_dict`` / ``model`` key; ``module.`` stripped), loaded safely (``weights_only``)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"model.pretrained: no such file {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's file
        raise PretrainedWeightsError(f"model.pretrained: cannot read {path!r} as a state dict: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"model.pretrained: {path!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trunk_weights(trunk: nn.Module, state: dict, source: str, drop_prefixes: Tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``trunk`` strictly, the classifier's keys (``drop_prefixes``) left out;
    a mismatch is a :class:`PretrainedWeightsError` naming missing, unexpected and mis-shaped keys."""
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    problem = state_dict_mismatch(trunk, state)
    if problem:
        raise PretrainedWeightsError(f"the weights from {source} do not fit this backbone: {problem}. "
                                     f"Is it a state dict of the configured model.backbone?")
    trunk.load_state_dict(state, strict=True)


class TorchvisionResNet(BackboneEntry):
    """torchvision's ResNet trunk (``fc`` removed, ``avgpool`` replaced by the configured pooling)."""

    def preprocessing(self, kwargs: Mapping) -> Preprocessing:
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 227, 227 / 256, "bilinear")

    def check(self, pooling: str, pretrained: str, kwargs: Mapping) -> None:
        super().check(pooling, pretrained, kwargs)
        if pooling == "model":
            raise BackboneError(f"model.pooling model is for timm backbones; {self.name} pools with max or avg")
        if kwargs:
            raise BackboneError(f"model.backbone_kwargs {dict(kwargs)} are for timm backbones; {self.name} takes none")

    def imagenet_state_dict(self) -> dict:
        """torchvision's ImageNet-1k weights (``IMAGENET1K_V1``, as the paper's code used), from
        torch's hub cache (``$TORCH_HOME/hub/checkpoints``) or downloaded there."""
        from torchvision.models import get_model_weights

        weights = get_model_weights(self.name).IMAGENET1K_V1
        try:
            return weights.get_state_dict(progress=True, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            file = os.path.basename(weights.url)
            raise PretrainedWeightsError(
                f"could not load torchvision's ImageNet weights for {self.name} ({type(e).__name__}: {e}). "
                f"Offline? On a machine with internet download {weights.url}, copy it here and set "
                f"`model.pretrained /path/to/{file}` (or put it in $TORCH_HOME/hub/checkpoints/), "
                f"or train from scratch with `model.pretrained none`.") from e

    def build(self, pooling: str, pretrained: str, kwargs: Mapping) -> Tuple[nn.Module, int]:
        from torchvision.models import get_model

        self.check(pooling, pretrained, kwargs)
        trunk = get_model(self.name, weights=None)
        features = trunk.fc.in_features
        trunk.fc = nn.Identity()
        trunk.avgpool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else nn.AdaptiveAvgPool2d(1)
        if pretrained in ("imagenet", "hub"):
            load_trunk_weights(trunk, self.imagenet_state_dict(), f"torchvision ImageNet weights of {self.name}",
                               ("fc.",))
        elif pretrained not in ("none", "", None):
            load_trunk_weights(trunk, load_local_state_dict(pretrained), repr(pretrained), ("fc.",))
        return trunk, features


class TimmEntry(BackboneEntry):
    """Any timm model, ``num_classes=0``: its ``forward`` returns the pooled pre-logits feature."""

    def __init__(self, name: str):
        super().__init__(name)
        self.model_name = name[len(TIMM_PREFIX):]

    @staticmethod
    def _timm():
        try:
            import timm
        except ImportError:
            raise BackboneError("model.backbone timm/... needs timm: pip install -e \".[timm]\" "
                                "(or pip install timm)") from None
        return timm

    def check(self, pooling: str, pretrained: str, kwargs: Mapping) -> None:
        super().check(pooling, pretrained, kwargs)
        timm = self._timm()
        if not timm.is_model(self.model_name):
            hint = closest(self.model_name, timm.list_models(), n=5)
            raise BackboneError(f"model.backbone {self.name!r}: timm has no model {self.model_name!r}"
                                + (f"; closest: {', '.join(TIMM_PREFIX + h for h in hint)}" if hint else ""))

    def _pretrained_cfg(self):
        return self._timm().get_pretrained_cfg(self.model_name)

    def preprocessing(self, kwargs: Mapping) -> Preprocessing:
        pc = self._pretrained_cfg()
        mean = tuple(getattr(pc, "mean", IMAGENET_MEAN)) if pc is not None else IMAGENET_MEAN
        std = tuple(getattr(pc, "std", IMAGENET_STD)) if pc is not None else IMAGENET_STD
        size = int(pc.input_size[-1]) if pc is not None else 224
        size = int(kwargs.get("img_size", size)) if not isinstance(kwargs.get("img_size"), (list, tuple)) \
            else int(kwargs["img_size"][-1])
        crop_pct = float(getattr(pc, "crop_pct", 0.875) or 0.875) if pc is not None else 0.875
        interpolation = str(getattr(pc, "interpolation", "bicubic") or "bicubic") if pc is not None else "bicubic"
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            interpolation = "bicubic"
        return Preprocessing(mean, std, size, crop_pct, interpolation)

    def hub_file(self) -> str:
        """Where the hub weights of this model live (for the offline message)."""
        pc = self._pretrained_cfg()
        if pc is not None and getattr(pc, "hf_hub_id", None):
            return f"https://huggingface.co/{pc.hf_hub_id}/resolve/main/model.safetensors"
        if pc is not None and getattr(pc, "url", None):
            return pc.url
        return f"the weights of timm's {self.model_name} (timm.list_pretrained({self.model_name!r}))"

    def build(self, pooling: str, pretrained: str, kwargs: Mapping) -> Tuple[nn.Module, int]:
        self.check(pooling, pretrained, kwargs)
        timm = self._timm()
        options = dict(kwargs)
        if pooling != "model":
            options["global_pool"] = pooling
        try:
            trunk = timm.create_model(self.model_name, pretrained=False, num_classes=0, **options)
        except TypeError as e:
            raise BackboneError(f"model.backbone_kwargs {dict(kwargs)}: timm's {self.model_name} refused them ({e})") from None
        if pretrained in ("imagenet", "hub"):
            try:
                hub = timm.create_model(self.model_name, pretrained=True, num_classes=0, **options)
            except Exception as e:  # noqa: BLE001 - offline, or no weights for this tag
                raise PretrainedWeightsError(
                    f"could not load timm's pretrained weights for {self.model_name} ({type(e).__name__}: {e}). "
                    f"Offline? On a machine with internet download {self.hub_file()}, copy it here and set "
                    f"`model.pretrained /path/to/model.safetensors`, or train from scratch with "
                    f"`model.pretrained none`.") from None
            trunk.load_state_dict(hub.state_dict())
        elif pretrained not in ("none", "", None):
            classifier = getattr(trunk, "pretrained_cfg", {}).get("classifier", "head")
            names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            load_trunk_weights(trunk, load_local_state_dict(pretrained), repr(pretrained),
                               tuple(f"{n}." for n in names))
        features = getattr(trunk, "head_hidden_size", None) or trunk.num_features
        return trunk, int(features)


def backbone_entry(name: str) -> BackboneEntry:
    """The entry of ``model.backbone`` ``name``; an unknown name names the choices."""
    if name in TORCHVISION_RESNETS:
        return TorchvisionResNet(name)
    if isinstance(name, str) and name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return TimmEntry(name)
    hint = closest(name, TORCHVISION_RESNETS)
    raise BackboneError(f"model.backbone {name!r} is not a backbone: one of {', '.join(TORCHVISION_RESNETS)}, "
                        f"or timm/<model name> (e.g. timm/vit_small_patch16_224)"
                        + (f"; did you mean {hint[0]!r}?" if hint else ""))



"""Augmentation of METHOD.md §1.7 at a configurable size; every image leaves with 3 channels."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from ibc_geo.data.image import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)  # the official code writes 0.299 for the first: a typo of 0.229
ERASING_VALUE = (0.4914, 0.4822, 0.4465)  # the official erasing constants (CIFAR-10 means), written as is


class ToRGB:
    """PIL image of any mode (L, P, RGBA, CMYK, 16-bit, float...) -> RGB (:func:`to_rgb`), so the
    network always sees 3 channels of the image's real contrast."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


class OfficialRandomErasing:
    r"""Random erasing as in the official code (``dataset/utils.py``, after Zhong et al.), on a
    ``C x H x W`` tensor (after normalisation).

    With probability ``p``: up to ``attempts`` times, draw an area :math:`a = s \cdot H W`,
    :math:`s \sim U[\text{area}]`, and an aspect ratio :math:`r \sim U[\text{ratio}]` (uniform, not
    log-uniform as torchvision's ``RandomErasing``); :math:`h = \mathrm{round}(\sqrt{a r})`,
    :math:`w = \mathrm{round}(\sqrt{a / r})`; the first with :math:`w < W` and :math:`h < H` is
    erased at a uniform top-left corner, each channel set to its constant of ``value`` (a 1-channel,
    or any non-3-channel, image gets ``value[0]``). The constants are written into the normalised
    tensor as they are, like the official code. Draws come from torch's global RNG (which the
    training pipeline seeds per sample). The input is not modified: an erased image is a copy.

    Args:
        p: the probability of erasing (default: ``0.5``).
        area: the range of the erased fraction of the image area (default: ``(0.02, 0.4)``).
        ratio_min: the aspect ratios drawn lie in ``[ratio_min, 1 / ratio_min]`` (default: ``0.3``).
        value: the per-channel fill (default: ``(0.4914, 0.4822, 0.4465)``).
        attempts: the draws tried before giving up, leaving the image as it is (default: ``100``).
    """

    def __init__(self, p: float = 0.5, area: Sequence[float] = (0.02, 0.4), ratio_min: float = 0.3,
                 value: Sequence[float] = ERASING_VALUE, attempts: int = 100):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {p}")
        if not 0.0 < area[0] <= area[1] <= 1.0 or not 0.0 < ratio_min <= 1.0:
            raise ValueError(f"random erasing needs 0 < area[0] <= area[1] <= 1 and 0 < ratio_min <= 1, "
                             f"got area={tuple(area)}, ratio_min={ratio_min}")
        self.p = float(p)
        self.area = (float(area[0]), float(area[1]))
        self.ratio = (float(ratio_min), 1.0 / float(ratio_min))
        self.value = tuple(float(v) for v in value)
        self.attempts = int(attempts)

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def box(self, height: int, width: int):
        """One draw of the official rule: ``(top, left, h, w)``, or ``None`` when every attempt failed."""
        for _ in range(self.attempts):
            target = self._uniform(*self.area) * height * width
            ratio = self._uniform(*self.ratio)
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if w < width and h < height:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                return top, left, h, w
        return None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.p:
            return img
        box = self.box(img.shape[-2], img.shape[-1])
        if box is None:
            return img
        top, left, h, w = box
        img = img.clone()
        if img.shape[0] == len(self.value):
            for c, v in enumerate(self.value):
                img[c, top:top + h, left:left + w] = v
        else:
            img[..., top:top + h, left:left + w] = self.value[0]
        return img

    def __repr__(self) -> str:
        return (f"OfficialRandomErasing(p={self.p}, area={self.area}, ratio=({self.ratio[0]}, {self.ratio[1]:.4f}), "
                f"value={self.value}, attempts={self.attempts})")


def default_resize_size(image_size: int) -> int:
    """The paper's 256 / 227 ratio: Resize(256) before CenterCrop(227)."""
    return int(round(image_size * 256 / 227))


def _triple(values: Sequence[float]) -> tuple:
    return tuple(float(v) for v in values)


_INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                  "nearest": T.InterpolationMode.NEAREST}


def train_transforms(image_size: int = 227, random_erasing: float = 0.5, crop_scale: float = 0.08,
                     hflip: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear") -> T.Compose:
    """RandomResizedCrop (area scale ``[crop_scale, 1]``), horizontal flip, ToTensor, Normalize(mean,
    std) (default ImageNet's; the official code's std (0.299, 0.224, 0.225) is a typo of 0.229), then
    :class:`OfficialRandomErasing` with probability ``random_erasing`` (none at 0)."""
    steps = [ToRGB(), T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0),
                                          interpolation=_INTERPOLATION[interpolation])]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(_triple(mean), _triple(std))]
    if random_erasing > 0:
        steps.append(OfficialRandomErasing(p=random_erasing))
    return T.Compose(steps)


def eval_transforms(image_size: int = 227, resize_size: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear") -> T.Compose:
    """Resize (shorter side; 0 = image_size * 256 / 227), CenterCrop, ToTensor, Normalize(mean, std)
    (default ImageNet's)."""
    resize = resize_size or default_resize_size(image_size)
    if resize < image_size:
        raise ValueError(f"data.resize_size ({resize}) must be >= data.image_size ({image_size}) or 0")
    return T.Compose([ToRGB(), T.Resize(resize, interpolation=_INTERPOLATION[interpolation]),
                      T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(_triple(mean), _triple(std))])


def build_transforms(cfg, train: bool) -> T.Compose:
    """The transforms of ``cfg.data`` (normalised with ``data.mean`` / ``data.std``): training
    augmentation when ``train``, else the test pipeline."""
    mean, std = _triple(cfg.data.mean), _triple(cfg.data.std)
    interpolation, resize = backbone_resize(cfg)
    if train:
        return train_transforms(cfg.data.image_size, cfg.data.random_erasing, cfg.data.crop_scale,
                                cfg.data.hflip, mean=mean, std=std, interpolation=interpolation)
    return eval_transforms(cfg.data.image_size, resize, mean=mean, std=std, interpolation=interpolation)


def backbone_resize(cfg) -> tuple:
    """``(interpolation, test resize)`` of ``cfg``: ``data.interpolation`` / ``data.resize_size``, or
    where they are ``""`` / ``0`` the backbone's own (:mod:`ibc_geo.nn.backbones`; the ResNets:
    bilinear and image_size * 256 / 227, the paper's)."""
    from ibc_geo.nn.backbones import backbone_entry

    own = backbone_entry(cfg.model.backbone).preprocessing(dict(cfg.model.get("backbone_kwargs", {}) or {}))
    interpolation = cfg.data.get("interpolation", "") or own.interpolation
    return interpolation, int(cfg.data.resize_size or own.resize_size(cfg.data.image_size))

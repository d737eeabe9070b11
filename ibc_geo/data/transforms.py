"""Augmentation of METHOD.md §1.7 at a configurable size; every image leaves with 3 channels."""
from __future__ import annotations

from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToRGB:
    """PIL image of any mode (L, P, RGBA, CMYK...) -> RGB, so the network always sees 3 channels."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def default_resize_size(image_size: int) -> int:
    """The paper's 256 / 227 ratio: Resize(256) before CenterCrop(227)."""
    return int(round(image_size * 256 / 227))


def train_transforms(image_size: int = 227, random_erasing: float = 0.5, crop_scale: float = 0.08,
                     hflip: bool = True) -> T.Compose:
    """RandomResizedCrop (area scale ``[crop_scale, 1]``), horizontal flip, ToTensor, ImageNet
    normalisation, RandomErasing(p)."""
    steps = [ToRGB(), T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0))]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if random_erasing > 0:
        steps.append(T.RandomErasing(p=random_erasing))
    return T.Compose(steps)


def eval_transforms(image_size: int = 227, resize_size: int = 0) -> T.Compose:
    """Resize (shorter side; 0 = image_size * 256 / 227), CenterCrop, ToTensor, ImageNet normalisation."""
    resize = resize_size or default_resize_size(image_size)
    if resize < image_size:
        raise ValueError(f"data.resize_size ({resize}) must be >= data.image_size ({image_size}) or 0")
    return T.Compose([ToRGB(), T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_transforms(cfg, train: bool) -> T.Compose:
    """The transforms of ``cfg.data``: training augmentation when ``train``, else the test pipeline."""
    if train:
        return train_transforms(cfg.data.image_size, cfg.data.random_erasing, cfg.data.crop_scale,
                                cfg.data.hflip)
    return eval_transforms(cfg.data.image_size, cfg.data.resize_size)

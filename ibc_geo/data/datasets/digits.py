"""scikit-learn's bundled handwritten digits (no download), upscaled: digits 0-4 train, 5-9 test."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict

import numpy as np
from PIL import Image

from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split

DIGITS_SIZE = 64  # side of the upscaled images (the 8x8 originals are resized bilinearly)


@lru_cache(maxsize=2)
def load_digit_images(size: int = DIGITS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, size, size), labels) of ``sklearn.datasets.load_digits`` (1,797 images; cached, read-only)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in small])
    labels = digits.target.astype(np.int64)
    big.flags.writeable = labels.flags.writeable = False
    return big, labels


@DATASETS.register("digits")
class Digits(DatasetFormat):
    """The built-in demo dataset: 1,797 grayscale 8x8 digits upscaled to 64x64; ``data.root`` unused."""

    name = "digits"
    layout = "(built in: scikit-learn's bundled digits; data.root is not used)\n"
    needs_root = False

    def read(self) -> Dict[str, Split]:
        images, labels = load_digit_images()
        split = Split(paths=[f"digits[{i}]" for i in range(len(labels))], classes=labels.tolist(), images=images)
        return {"train": split.subset(labels <= 4), "test": split.subset(labels >= 5)}

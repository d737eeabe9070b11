"""scikit-learn's bundled handwritten digits (no download): digits 0-4 train, 5-9 test.

Two built-in formats:

* ``digits``: the 1,797 grayscale 8x8 digits upscaled to 64x64.
* ``noisy_digits``: the same digits centred on a 40x40 black canvas under heavy, fixed per-pixel
  Gaussian noise, each training digit in :data:`NOISY_TRAIN_COPIES` noise draws. The demo's data:
  on clean digits an untrained network is already near the ceiling (a random ResNet-18 reaches
  97.8 % Recall@1 on digits 5-9, cosine on raw pixels 99.1 %), so training has nothing to show.
  The noise leaves room, and what it asks of the network (ignore the noise, keep the strokes)
  is learnable from digits 0-4 and carries over to the unseen digits 5-9.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict

import numpy as np
from PIL import Image

from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split

DIGITS_SIZE = 64  # side of the upscaled images (the 8x8 originals are resized bilinearly)

NOISY_CANVAS = 40  # side of a noisy digit image
NOISY_DIGIT_SIZE = 28  # side of the digit, centred on the canvas
NOISE_STD = 0.7  # standard deviation of the noise, intensities in [0, 1] (then clipped)
NOISY_TRAIN_COPIES = 4  # noise draws of each training digit (test digits: one each)
NOISE_SEED = 2021  # the noise is part of the dataset: fixed, whatever the run's seed


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


def add_noise(clean: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``clip(clean / 255 + N(0, std^2), 0, 1)`` as uint8 RGB: ``clean`` (N, H, W) -> (N, H, W, 3),
    independent noise per pixel and channel."""
    noisy = clean[..., None].astype(np.float32) / 255.0 + rng.normal(0.0, std, clean.shape + (3,)).astype(np.float32)
    return np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)


@lru_cache(maxsize=1)
def noisy_digit_splits() -> Dict[str, tuple]:
    """``{"train"|"test": (images uint8 (N, 40, 40, 3), labels, source indices)}`` of ``noisy_digits``.

    Deterministic (seeded by :data:`NOISE_SEED`); training digits appear in
    :data:`NOISY_TRAIN_COPIES` independent noise draws, test digits once. Cached, read-only.
    """
    digits, labels = load_digit_images(NOISY_DIGIT_SIZE)
    pad = (NOISY_CANVAS - NOISY_DIGIT_SIZE) // 2
    extra = NOISY_CANVAS - NOISY_DIGIT_SIZE - pad
    canvas = np.pad(digits, ((0, 0), (pad, extra), (pad, extra)))
    splits = {}
    for stream, (name, keep, copies) in enumerate((("train", labels <= 4, NOISY_TRAIN_COPIES),
                                                   ("test", labels >= 5, 1))):
        source = np.tile(np.flatnonzero(keep), copies)
        images = add_noise(canvas[source], NOISE_STD, np.random.default_rng([NOISE_SEED, stream]))
        split_labels = labels[source]
        for array in (images, split_labels, source):
            array.flags.writeable = False
        splits[name] = (images, split_labels, source)
    return splits


@DATASETS.register("digits")
class Digits(DatasetFormat):
    """The 1,797 grayscale 8x8 digits upscaled to 64x64; ``data.root`` unused."""

    name = "digits"
    layout = "(built in: scikit-learn's bundled digits; data.root is not used)\n"
    needs_root = False

    def read(self) -> Dict[str, Split]:
        images, labels = load_digit_images()
        split = Split(paths=[f"digits[{i}]" for i in range(len(labels))], classes=labels.tolist(), images=images)
        return {"train": split.subset(labels <= 4), "test": split.subset(labels >= 5)}


@DATASETS.register("noisy_digits")
class NoisyDigits(DatasetFormat):
    """The demo's data: the digits at 28x28 on a 40x40 canvas under fixed Gaussian noise (std 0.7),
    3,604 training images (digits 0-4, 4 noise draws each), 896 test images (5-9); ``data.root`` unused."""

    name = "noisy_digits"
    layout = "(built in: scikit-learn's bundled digits under fixed noise; data.root is not used)\n"
    needs_root = False

    def read(self) -> Dict[str, Split]:
        splits = {}
        for name, (images, labels, source) in noisy_digit_splits().items():
            copy = np.arange(len(source)) // len(np.unique(source))  # which noise draw (np.tile order)
            paths = [f"noisy_digits[{i}]#{c}" for i, c in zip(source.tolist(), copy.tolist())]
            splits[name] = Split(paths=paths, classes=labels.tolist(), images=images)
        return splits

"""One split of a dataset as parsed from its files, and the class-disjoint validation hold-out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ibc_geo.data.errors import DatasetError


@dataclass
class Split:
    """Images of one split in annotation order: their paths and ORIGINAL class ids.

    Args:
        paths: absolute image paths (or names such as ``"digits[12]"`` when ``images`` is set).
        classes: the original class id or name of each image (not yet remapped).
        query_mask: True = query, False = gallery (In-Shop test only), else None.
        images: in-memory ``uint8`` images (N, H, W) or (N, H, W, 3) instead of files, else None.
    """

    paths: list
    classes: list
    query_mask: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.classes):
            raise ValueError(f"Split has {len(self.paths)} paths but {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_set(self) -> set:
        return set(self.classes)

    def subset(self, keep: np.ndarray) -> "Split":
        """The images where the boolean mask ``keep`` is True, order kept."""
        idx = np.flatnonzero(keep)
        return Split(
            paths=[self.paths[i] for i in idx],
            classes=[self.classes[i] for i in idx],
            query_mask=None if self.query_mask is None else self.query_mask[idx],
            images=None if self.images is None else self.images[idx],
        )


def num_validation_classes(val_classes: float, num_classes: int) -> int:
    """``data.val_classes`` as a count: >= 1 a number of classes, in (0, 1) a fraction, 0 none."""
    if val_classes < 0:
        raise DatasetError(f"data.val_classes must be >= 0, got {val_classes}")
    if val_classes == 0:
        return 0
    n = int(val_classes) if val_classes >= 1 else max(1, int(round(val_classes * num_classes)))
    if n < 2 or num_classes - n < 2:
        raise DatasetError(
            f"data.val_classes = {val_classes} holds out {n} of the {num_classes} training classes; "
            f"both the validation and the remaining training split need at least 2 classes"
        )
    return n


def hold_out_classes(train: Split, val_classes: float, seed: int) -> tuple[Split, Split]:
    """Split ``train`` class-disjointly into (train, val), deterministically under ``seed``.

    The sorted training classes are permuted by ``numpy.random.default_rng(seed)``; the first
    ``num_validation_classes(val_classes, C)`` of the permutation form the validation split.
    """
    classes = sorted(train.class_set)
    n = num_validation_classes(val_classes, len(classes))
    if n == 0:
        raise DatasetError("no validation split: data.val_classes is 0 (set it, e.g. 0.15 or 20)")
    order = np.random.default_rng(seed).permutation(len(classes))
    held = {classes[i] for i in order[:n]}
    is_val = np.fromiter((c in held for c in train.classes), dtype=bool, count=len(train))
    return train.subset(~is_val), train.subset(is_val)


def check_disjoint(a: Sequence, b: Sequence, what: str) -> None:
    """Raise if two splits share classes (the open-set protocol forbids it)."""
    shared = set(a) & set(b)
    if shared:
        example = sorted(shared, key=str)[:5]
        raise DatasetError(
            f"{what}: {len(shared)} classes appear in both splits (e.g. {example}); "
            f"the open-set protocol needs class-disjoint train and test splits"
        )

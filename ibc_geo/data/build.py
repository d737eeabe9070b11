"""build_dataset: a config and a split name -> RetrievalDataset."""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional

from ibc_geo.data.dataset import RetrievalDataset
from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split, hold_out_classes
from ibc_geo.data.transforms import build_transforms

SPLITS = ("train", "val", "test")


def dataset_format(cfg) -> DatasetFormat:
    """The registered format of ``cfg.data.name`` opened at ``cfg.data.root``."""
    return DATASETS.get(cfg.data.name)(cfg.data.root)


def with_validation(splits: Dict[str, Split], val_classes: float, seed: int, root: str = "") -> Dict[str, Split]:
    """The splits of ``DatasetFormat.read()`` with ``"val"`` added when there is one.

    ``val`` comes from the files when they define one (``imagefolder``'s ``val/``; then
    ``val_classes`` is not used, with a warning if set), else from ``val_classes`` of the training
    classes held out by :func:`~ibc_geo.data.split.hold_out_classes` (the rest stays ``train``).
    """
    splits = dict(splits)
    if "val" in splits:
        if val_classes > 0:
            warnings.warn(f"{root} has its own val/ split; data.val_classes = {val_classes} is not used",
                          RuntimeWarning)
    elif val_classes > 0:
        splits["train"], splits["val"] = hold_out_classes(splits["train"], val_classes, seed)
    return splits


def warn_singleton_classes(dataset: RetrievalDataset) -> None:
    """Documented handling of classes with one image: kept, with a warning (see datasets/README.md)."""
    sizes = dataset.class_sizes()
    singles = [dataset.class_ids[c] for c in (sizes == 1).nonzero()[0]]
    if singles:
        warnings.warn(
            f"{dataset.name} {dataset.split}: {len(singles)} classes have a single image (e.g. {singles[0]!r}); "
            f"in training the PK sampler repeats that image K times (no positive pair with another image); "
            f"in evaluation such a query has no positive",
            RuntimeWarning,
        )


def build_dataset(cfg, split: str, transform: Optional[Callable] = None) -> RetrievalDataset:
    """The ``split`` ("train", "val" or "test") of ``cfg.data.name`` at ``cfg.data.root``.

    ``train`` excludes the validation classes when ``data.val_classes`` > 0; ``val`` is those
    held-out training classes (a DatasetError when there are none); In-Shop ``test`` is query +
    gallery with ``query_mask``. ``transform`` None = :func:`build_transforms` of the split
    (training augmentation for ``train``, the test pipeline otherwise).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    fmt = dataset_format(cfg)
    splits = with_validation(fmt.read(), cfg.data.val_classes, cfg.seed, fmt.root)
    if split not in splits:
        raise DatasetError(
            f"{cfg.data.name} has no {split!r} split: data.val_classes is 0 "
            f"(set it, e.g. data.val_classes 0.15, to hold out training classes for validation)"
        )
    chosen = splits[split]
    if transform is None:
        transform = build_transforms(cfg, train=split == "train")
    dataset = RetrievalDataset(
        chosen.paths, chosen.classes, name=cfg.data.name, split=split, transform=transform,
        query_mask=chosen.query_mask, images=chosen.images,
        # Evaluation never substitutes an image (that would hand its query a same-class hit).
        on_corrupt=cfg.data.on_corrupt if split == "train" else cfg.eval.on_corrupt,
    )
    warn_singleton_classes(dataset)
    return dataset

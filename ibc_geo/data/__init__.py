"""Datasets read as their authors ship them, PK sampling, augmentation (see datasets/README.md).

Importing this package registers every dataset format in :data:`DATASETS`.
"""
from ibc_geo.data.registry import DATASETS
from ibc_geo.data import datasets as _formats  # noqa: F401  (registers cub, cars, sop, inshop, imagefolder, digits)
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.split import Split, hold_out_classes
from ibc_geo.data.dataset import RetrievalDataset
from ibc_geo.data.transforms import build_transforms, eval_transforms, train_transforms
from ibc_geo.data.sampler import PKSampler, SeededBatches
from ibc_geo.data.build import build_dataset
from ibc_geo.data.loaders import build_eval_loader, build_train_loader

__all__ = [
    "DATASETS",
    "DatasetError",
    "PKSampler",
    "RetrievalDataset",
    "SeededBatches",
    "Split",
    "build_dataset",
    "build_eval_loader",
    "build_train_loader",
    "build_transforms",
    "eval_transforms",
    "hold_out_classes",
    "train_transforms",
]

"""Cars196 (Stanford Cars) read from ``cars_annos.mat`` or the devkit; classes 1-98 train, 99-196 test."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import scipy.io

from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split


def _scalar(value):
    """A MATLAB scalar or string as loaded by scipy (nested 1x1 arrays) -> Python value."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a scalar or string, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def load_mat(path: str) -> dict:
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a broken file
        raise DatasetError(f"cannot read MATLAB file {path}: {e}") from e


def _variable(mat: dict, path: str, variable: str) -> np.ndarray:
    if variable not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} has no variable {variable!r} (found: {found})")
    return mat[variable]


def read_struct(mat: dict, path: str, variable: str, fields: Tuple[str, ...]) -> List[dict]:
    """The records of the MATLAB struct array ``variable`` of ``mat`` (loaded from ``path``)."""
    data = _variable(mat, path, variable)
    names = data.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DatasetError(f"{path}: struct {variable!r} lacks fields {missing} (has {list(names)})")
    columns = {f: data[f].reshape(-1) for f in fields}
    try:
        return [{f: _scalar(columns[f][i]) for f in fields} for i in range(data.size)]
    except ValueError as e:
        raise DatasetError(f"{path}: malformed struct {variable!r}: {e}") from None


def read_cell_strings(mat: dict, path: str, variable: str) -> List[str]:
    """A MATLAB cell array of strings (e.g. ``class_names``) of ``mat`` (loaded from ``path``)."""
    try:
        return [str(_scalar(v)) for v in _variable(mat, path, variable).reshape(-1)]
    except ValueError as e:
        raise DatasetError(f"{path}: malformed cell array {variable!r}: {e}") from None


@DATASETS.register("cars")
class Cars(DatasetFormat):
    """Cars196: ``cars_annos.mat`` + ``car_ims/``, or the devkit form (both parts merged).

    The ``test`` field of ``cars_annos.mat`` and the devkit's train/test folders are the
    CLASSIFICATION split and are not used: all images are pooled, then the first half of the
    classes of ``class_names`` (1-98 of 196) is the training split, the rest the test split.
    """

    name = "cars"
    layout = """\
    either (car_ims.tgz + cars_annos.mat):
      <data.root>/cars_annos.mat   struct annotations(relative_im_path, bbox_x1..bbox_y2, class, test), class_names
      <data.root>/car_ims/000001.jpg ...
    or the devkit form (cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat):
      <data.root>/devkit/cars_meta.mat         class_names
      <data.root>/devkit/cars_train_annos.mat  struct annotations(bbox_x1..bbox_y2, class, fname)
      <data.root>/cars_test_annos_withlabels.mat   (or in devkit/)
      <data.root>/cars_train/00001.jpg ...
      <data.root>/cars_test/00001.jpg ...
    """
    expected = {"train": (8054, 98), "test": (8131, 98)}

    def read(self) -> Dict[str, Split]:
        if os.path.isfile(self.path("cars_annos.mat")):
            paths, classes, num_classes = self._read_annos()
        elif os.path.isdir(self.path("devkit")):
            paths, classes, num_classes = self._read_devkit()
        else:
            raise self.missing(self.path("cars_annos.mat"), "cars_annos.mat (or the devkit/ folder)")
        bad = sorted({c for c in classes if not 1 <= c <= num_classes})
        if bad:
            raise DatasetError(f"Cars annotations use class ids outside 1..{num_classes} of class_names: {bad[:5]}")
        seen: dict = {}
        for p in paths:
            if p in seen:
                raise DatasetError(f"Cars annotations list the image {p} twice")
            seen[p] = True
        half = num_classes // 2
        is_train = np.array([c <= half for c in classes], dtype=bool)
        split = Split(paths=paths, classes=classes)
        return self.probe({"train": split.subset(is_train), "test": split.subset(~is_train)})

    def _read_annos(self) -> Tuple[List[str], List[int], int]:
        path = self.require_file("cars_annos.mat")
        self.require_dir("car_ims")
        mat = load_mat(path)
        records = read_struct(mat, path, "annotations", ("relative_im_path", "class"))
        num_classes = len(read_cell_strings(mat, path, "class_names"))
        return [self.path(str(r["relative_im_path"])) for r in records], [int(r["class"]) for r in records], num_classes

    def _read_devkit(self) -> Tuple[List[str], List[int], int]:
        meta = self.require_file("devkit", "cars_meta.mat")
        train_mat = self.require_file("devkit", "cars_train_annos.mat")
        test_mat = self.path("devkit", "cars_test_annos_withlabels.mat")
        if not os.path.isfile(test_mat):
            test_mat = self.path("cars_test_annos_withlabels.mat")
        if not os.path.isfile(test_mat):
            raise self.missing(test_mat, "cars_test_annos_withlabels.mat (in data.root or devkit/; "
                                         "devkit/cars_test_annos.mat has no labels)")
        paths, classes = [], []
        for mat, folder in ((train_mat, "cars_train"), (test_mat, "cars_test")):
            directory = self.require_dir(folder)
            for r in read_struct(load_mat(mat), mat, "annotations", ("fname", "class")):
                paths.append(os.path.join(directory, str(r["fname"])))
                classes.append(int(r["class"]))
        return paths, classes, len(read_cell_strings(load_mat(meta), meta, "class_names"))

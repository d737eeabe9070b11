"""A custom dataset as class folders: ``root/train/<class>/*``, ``root/test/<class>/*`` (optional ``val/``)."""
from __future__ import annotations

import os
import warnings
from typing import Dict

from ibc_geo.data.errors import DatasetError
from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def read_class_folders(folder: str) -> Split:
    """Every image (by extension, case-insensitive) of every class sub-folder, sorted by class then file.

    Hidden entries are ignored; other files are ignored with one warning; a class folder without
    images raises a DatasetError (an empty class would change the class count silently).
    """
    paths, classes, ignored = [], [], []
    class_names = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    if not class_names:
        raise DatasetError(f"{folder} holds no class folders; expected {folder}/<class>/<image files>")
    for name in class_names:
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if not f.startswith("."))
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        ignored += [os.path.join(class_dir, f) for f in files if f not in images]
        if not images:
            raise DatasetError(
                f"class folder {class_dir} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"remove the folder or add its images"
            )
        paths += [os.path.join(class_dir, f) for f in images]
        classes += [name] * len(images)
    if ignored:
        warnings.warn(f"{folder}: ignored {len(ignored)} non-image entries, e.g. {ignored[0]}", RuntimeWarning)
    return Split(paths=paths, classes=classes)


@DATASETS.register("imagefolder")
class ImageFolder(DatasetFormat):
    """Class folders; the folder name is the class. With ``root/val/`` present, it is the
    validation split and ``data.val_classes`` is not used (see ``ibc_geo.data.build``)."""

    name = "imagefolder"
    layout = """\
    <data.root>/train/<class name>/<image files>    training classes
    <data.root>/test/<class name>/<image files>     test classes (disjoint from the training classes)
    <data.root>/val/<class name>/<image files>      optional validation classes
    """

    def read(self) -> Dict[str, Split]:
        splits = {"train": read_class_folders(self.require_dir("train")),
                  "test": read_class_folders(self.require_dir("test"))}
        if os.path.isdir(self.path("val")):
            splits["val"] = read_class_folders(self.path("val"))
        for other in ("test", "val"):
            if other in splits:
                shared = splits["train"].class_set & splits[other].class_set
                if shared:
                    warnings.warn(
                        f"{self.root}: {len(shared)} class folders appear in both train/ and {other}/ "
                        f"(e.g. {sorted(shared)[0]!r}); this is not an open-set split", RuntimeWarning)
        return splits

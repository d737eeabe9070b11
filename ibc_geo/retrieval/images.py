"""Images outside any dataset format: a folder (searched recursively), a text list, or single files.

Decoding is the datasets' (``PIL.Image.open``, full ``load``, :func:`~ibc_geo.data.image.to_rgb`),
and the transform is the evaluation's, so an image embeds the same here as in evaluation.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ibc_geo.data.datasets.imagefolder import IMAGE_EXTENSIONS
from ibc_geo.retrieval.errors import EmptyInputError, ImageReadError

log = logging.getLogger(__name__)


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: str) -> List[str]:
    """Every image below ``folder`` as an absolute path, each file once: linked folders are followed,
    but never into a folder already visited (a link loop such as ``a/back -> ..``), and a file
    reached by two paths (a link, a linked folder) is kept under its first path in sorted order."""
    folder = os.path.abspath(folder)
    found, visited, skipped = [], set(), []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # reached again through a link: its files are listed already
            dirnames[:] = []
            skipped.append(dirpath)
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image_file(f)]
    unique, seen = [], set()
    for path in sorted(found):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    if skipped or len(unique) < len(found):
        log.warning("%s: %d linked folders lead back to folders already listed (e.g. %s) and %d image paths name "
                    "a file listed under another path; each image is embedded once", folder, len(skipped),
                    skipped[0] if skipped else "none", len(found) - len(unique))
    return unique


def _read_list(list_file: str) -> List[str]:
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ImageReadError(f"cannot read image list {list_file}: {e} (expected a text file with one image "
                             f"path per line)") from None
    base = os.path.dirname(os.path.abspath(list_file))
    entries = [line.strip() for line in lines]
    return [e if os.path.isabs(e) else os.path.join(base, e) for e in entries if e and not e.startswith("#")]


def list_images(source: str) -> List[str]:
    """The images of ``source`` as absolute paths: a folder (every image file below it, by extension,
    hidden entries skipped, sorted, each file once, link loops not followed), a text list (one path per line, relative to the list's folder; blank lines
    and ``#`` comments skipped) or one image file. Raises :class:`EmptyInputError` for no images,
    :class:`ImageReadError` for a missing source or a listed file that does not exist."""
    source = os.fspath(source)
    if os.path.isdir(source):
        paths = _walk_images(source)
        if not paths:
            raise EmptyInputError(f"{source} holds no image files (expected files ending in "
                                  f"{', '.join(IMAGE_EXTENSIONS)}, in the folder or below)")
        return paths
    if not os.path.exists(source):
        raise ImageReadError(f"image folder or list not found: {source} (expected a folder of images, a .txt "
                             f"list of image paths, or an image file)")
    if is_image_file(source):
        return [os.path.abspath(source)]
    paths = _read_list(source)
    if not paths:
        raise EmptyInputError(f"image list {source} names no images (expected one image path per line)")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ImageReadError(f"image list {source}: {len(missing)} of {len(paths)} listed files do not exist, "
                             f"e.g. {missing[0]} (relative paths are read from the list's folder)")
    return paths


def check_image_files(paths: Sequence[str], what: str = "image") -> None:
    """A missing file (or a folder) among ``paths`` raises :class:`ImageReadError` naming it."""
    for p in paths:
        if not os.path.isfile(p):
            raise ImageReadError(f"{what} not found: {p} (expected an image file)")


def folder_names(paths: Sequence[str]) -> List[str]:
    """The name of each path's parent folder."""
    return [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]


def labels_from_folders(paths: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Each path's class = the name of its parent folder: ``(labels int64 [N], sorted class names)``."""
    names = folder_names(paths)
    uniq, inverse = np.unique(np.asarray(names), return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), [str(u) for u in uniq]


def read_image(path: str):
    """The RGB PIL image at ``path``, decoded as the datasets decode; :class:`ImageReadError` otherwise."""
    from PIL import Image

    from ibc_geo.data.image import to_rgb

    if not os.path.isfile(path):
        raise ImageReadError(f"image not found: {path} (expected an image file)")
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: a truncated file raises here
            return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, ...
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e} (expected an image file "
                             f"PIL can decode)") from None


class ImageFiles:
    """A map-style dataset of image files for a DataLoader: ``(image, label, index, error)``.

    An unreadable file does not raise inside a worker (its trace would be wrapped into many lines):
    it yields a zero image and its message in ``error``, and the embedding loop raises
    :class:`ImageReadError` for it in the main process.

    Args:
        paths: the image files.
        transform: PIL image -> tensor (the evaluation transform).
        image_size: the side of the transform's output, for the zero image of an unreadable file.
        labels: optional int labels (``-1`` when None).
    """

    def __init__(self, paths: Sequence[str], transform: Callable, image_size: int,
                 labels: Optional[np.ndarray] = None):
        self.paths = list(paths)
        self.transform = transform
        self.image_size = int(image_size)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        label = -1 if self.labels is None else int(self.labels[index])
        try:
            image = self.transform(read_image(self.paths[index]))
            error = ""
        except ImageReadError as e:
            image, error = torch.zeros(3, self.image_size, self.image_size), str(e)
        except Exception as e:  # noqa: BLE001 - e.g. an image too small or odd for the transform
            image = torch.zeros(3, self.image_size, self.image_size)
            error = f"cannot preprocess image {self.paths[index]}: {type(e).__name__}: {e}"
        return image, label, index, error


class GalleryImages:
    """The images of an embeddings file by gallery index, for drawing: the file at its path, or,
    for a split of an in-memory dataset (``digits[3]``), the dataset rebuilt from the config the
    file records. A gallery image that cannot be had raises :class:`ImageReadError`."""

    def __init__(self, gallery):
        self.gallery = gallery
        self._dataset = None

    def __getitem__(self, index: int):
        path = str(self.gallery.paths[index])
        if os.path.isfile(path):
            return read_image(path)
        dataset = self._split_dataset()
        if dataset is None:
            raise ImageReadError(f"gallery image not found: {path} (listed in {self.gallery.path}); drawing needs "
                                 f"the gallery's image files where they were embedded")
        try:
            return dataset.load_image(index)
        except Exception as e:  # noqa: BLE001 - whatever PIL or the dataset raises
            raise ImageReadError(f"cannot read gallery image {path} (listed in {self.gallery.path}): "
                                 f"{type(e).__name__}: {e}") from None

    def _split_dataset(self):
        if self._dataset is None:
            source, text = self.gallery.meta.get("source", ""), self.gallery.meta.get("config_yaml", "")
            if not source.startswith("split:") or not text:
                return None
            import yaml

            from ibc_geo.config import config_from_dict
            from ibc_geo.data import build_dataset

            dataset = build_dataset(config_from_dict(yaml.safe_load(text)), source.split(":", 1)[1], transform=None)
            if len(dataset) != len(self.gallery) or list(dataset.paths[:3]) != [str(p) for p in self.gallery.paths[:3]]:
                return None
            self._dataset = dataset
        return self._dataset

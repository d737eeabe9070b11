"""RetrievalDataset: the images of one split, labels remapped to 0..C-1, corrupt files handled."""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ibc_geo.data.errors import DatasetError
from ibc_geo.data.image import to_rgb

ON_CORRUPT = ("skip", "error")  # training: data.on_corrupt
EVAL_ON_CORRUPT = ("error", "drop")  # evaluation: eval.on_corrupt (never substitutes)


class _Flags:
    """One byte per image marking unreadable files, shared with DataLoader worker processes.

    Backed by ``multiprocessing.RawArray`` (shared memory inherited by forked or spawned workers),
    so ``dataset.skipped`` in the main process counts files found bad in any worker.
    """

    def __init__(self, n: int):
        self._array = multiprocessing.RawArray(ctypes.c_uint8, max(n, 1))

    def __getitem__(self, i: int) -> bool:
        return bool(self._array[i])

    def set(self, i: int) -> None:
        self._array[i] = 1

    def indices(self) -> np.ndarray:
        return np.flatnonzero(np.frombuffer(self._array, dtype=np.uint8))

    def __getstate__(self):
        # While starting a worker process the shared memory itself travels; any other pickling
        # (deepcopy, saving) takes a private snapshot.
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"array": self._array}
        return {"snapshot": bytes(self._array)}

    def __setstate__(self, state):
        if "array" in state:
            self._array = state["array"]
        else:
            snapshot = state["snapshot"]
            self._array = multiprocessing.RawArray(ctypes.c_uint8, len(snapshot))
            self._array[:] = snapshot


class RetrievalDataset(torch.utils.data.Dataset):
    """The images of one split of a retrieval dataset.

    ``__getitem__(i)`` returns ``(image, label, i)``: the transformed image (the RGB ``PIL.Image``
    when ``transform`` is None; grayscale and palette images become 3-channel), its remapped label
    and its index (so that embeddings can be put back in dataset order).

    Unreadable images (missing, truncated, not an image): with ``on_corrupt="error"`` a DatasetError
    names the file; with ``"skip"`` (training) a RuntimeWarning names it, it is counted in ``skipped``
    (over all DataLoader workers) and the next readable image of the SAME class (cyclically in
    dataset order, so the choice is deterministic) is returned instead, with the requested index: a
    P x K batch stays intact. A class whose images are all unreadable raises a DatasetError. With
    ``"drop"`` (evaluation) nothing is substituted, which would hand that query a same-class hit: a
    black image of the same size stands in, the index is flagged (``skipped_indices``) and the
    evaluation removes it from the embeddings before any metric.

    Args:
        paths: one path per image (or a name such as ``"digits[3]"`` when ``images`` is given).
        classes: the original class id or name of each image; ``labels`` index the sorted
            distinct values, kept in ``class_ids``.
        name: the dataset's ``data.name``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image (default: None).
        query_mask: True = query, False = gallery (In-Shop test), else None (default: None).
        on_corrupt: ``"skip"`` or ``"error"`` (default: ``"skip"``).
        images: in-memory ``uint8`` images (N, H, W) or (N, H, W, 3) used instead of files (default: None).
    """

    def __init__(
        self,
        paths: Sequence[str],
        classes: Sequence,
        name: str,
        split: str,
        transform: Optional[Callable] = None,
        query_mask: Optional[np.ndarray] = None,
        on_corrupt: str = "skip",
        images: Optional[np.ndarray] = None,
    ):
        if len(paths) != len(classes):
            raise ValueError(f"{name} {split}: {len(paths)} paths but {len(classes)} classes")
        if len(paths) == 0:
            raise DatasetError(f"{name} {split} split is empty")
        if on_corrupt not in ON_CORRUPT + EVAL_ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT + EVAL_ON_CORRUPT[1:]}, got {on_corrupt!r}")
        if query_mask is not None and len(query_mask) != len(paths):
            raise ValueError(f"query_mask has {len(query_mask)} entries for {len(paths)} images")
        if images is not None and len(images) != len(paths):
            raise ValueError(f"images holds {len(images)} arrays for {len(paths)} paths")
        self.paths = list(paths)
        uniq, inverse = np.unique(np.asarray(classes), return_inverse=True)
        self.labels = inverse.astype(np.int64).reshape(-1)
        self.class_ids = uniq.tolist()
        self.num_classes = len(self.class_ids)
        self.name = name
        self.split = split
        self.transform = transform
        self.query_mask = None if query_mask is None else np.asarray(query_mask, dtype=np.bool_)
        self.on_corrupt = on_corrupt
        self.images = images
        self._bad = _Flags(len(self.paths))
        self._members: Optional[list] = None

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        extra = "" if self.query_mask is None else f", queries={int(self.query_mask.sum())}"
        return f"RetrievalDataset({self.name!r}, split={self.split!r}, images={len(self)}, classes={self.num_classes}{extra})"

    @property
    def skipped(self) -> int:
        """Number of distinct unreadable images met so far (in this process and its workers)."""
        return len(self._bad.indices())

    def skipped_indices(self) -> list:
        """Dataset indices of the unreadable images met so far (sorted)."""
        return sorted(int(i) for i in self._bad.indices())

    @property
    def skipped_paths(self) -> list:
        return [self.paths[i] for i in self._bad.indices()]

    def class_sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; raises whatever PIL raises for an unreadable file."""
        if self.images is not None:
            return to_rgb(Image.fromarray(self.images[index]))
        with Image.open(self.paths[index]) as img:
            img.load()  # decodes fully: a truncated file raises here
            return to_rgb(img)

    def _try_load(self, index: int) -> Optional[Image.Image]:
        if self._bad[index]:
            return None
        try:
            return self.load_image(index)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
            if self.on_corrupt == "error":
                option = "data.on_corrupt skip" if self.split == "train" else "eval.on_corrupt drop"
                raise DatasetError(
                    f"cannot read image {self.paths[index]} ({self.name} {self.split}, index {index}): {e}. "
                    f"Run tools/check_dataset.py to list every bad file, or set {option}"
                ) from e
            self._bad.set(index)
            warnings.warn(
                f"skipping unreadable image {self.paths[index]} ({type(e).__name__}: {e}); "
                f"{self.skipped} skipped so far in {self.name} {self.split}; "
                + ("dropping it from the evaluation" if self.on_corrupt == "drop"
                   else "using another image of the same class instead"),
                RuntimeWarning,
            )
            return None

    def _same_class_after(self, index: int) -> np.ndarray:
        if self._members is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.cumsum(self.class_sizes())[:-1]
            self._members = np.split(order, bounds)
        members = self._members[self.labels[index]]
        pos = int(np.searchsorted(members, index))
        return np.concatenate([members[pos + 1:], members[:pos]])

    def __getitem__(self, key):
        """``(image, label, index)`` of ``key``: an index, or ``(index, sample_seed)`` (what
        :class:`~ibc_geo.data.sampler.SeededBatches` yields), which runs the transform on torch's RNG
        seeded with ``sample_seed`` and restores the RNG afterwards: the augmentation of a sample is
        then a function of its seed alone, whichever process or worker loads it."""
        index, sample_seed = (key if isinstance(key, tuple) else (key, None))
        index = int(index)
        img = self._try_load(index)
        if img is None and self.on_corrupt == "drop":
            img = Image.new("RGB", (32, 32))  # a stand-in the evaluation removes (skipped_indices)
        if img is None:
            for other in self._same_class_after(index):
                img = self._try_load(int(other))
                if img is not None:
                    break
            else:
                raise DatasetError(
                    f"every image of class {self.class_ids[self.labels[index]]!r} in {self.name} {self.split} "
                    f"is unreadable (e.g. {self.paths[index]}); run tools/check_dataset.py"
                )
        if self.transform is not None:
            if sample_seed is None:
                img = self.transform(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(sample_seed))
                    img = self.transform(img)
        return img, int(self.labels[index]), index

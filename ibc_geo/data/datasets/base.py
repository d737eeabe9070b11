"""The base of every dataset format: where its files lie and how its open-set splits are read."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar, Dict, Iterator, List, Optional, Tuple

from ibc_geo.data.errors import DatasetError, missing_path_error
from ibc_geo.data.split import Split


class DatasetFormat(ABC):
    """How one benchmark lies on disk (as its authors ship it) and how to read its splits.

    Subclasses are registered in :data:`ibc_geo.data.DATASETS` under ``data.name`` and set:

    * ``layout``: the expected layout under ``data.root``, shown whenever a file is missing;
    * ``expected``: ``{split: (images, classes)}`` of the complete dataset (METHOD.md §3), which
      ``tools/check_dataset.py`` compares against (``classes`` may be None: not compared);
    * ``read()``: ``{"train": Split, "test": Split}`` (plus ``"val"`` where the files define one).
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    expected: ClassVar[Dict[str, Tuple[int, Optional[int]]]] = {}
    needs_root: ClassVar[bool] = True

    def __init__(self, root: str = ""):
        self.root = os.path.abspath(os.path.expanduser(root)) if root else ""
        if self.needs_root:
            if not root:
                raise DatasetError(
                    f"data.root is empty; data.name {self.name!r} needs the folder the dataset unpacks to, "
                    f"laid out as:\n{self.layout.rstrip()}\nSee datasets/README.md."
                )
            if not os.path.isdir(self.root):
                raise self.missing(self.root, "dataset root (data.root)")

    @abstractmethod
    def read(self) -> Dict[str, Split]:
        """The format's splits, parsed from its shipped files."""

    # Helpers for subclasses -------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def missing(self, path: str, what: str) -> DatasetError:
        return missing_path_error(path, what, self.name, self.root, self.layout)

    def require_file(self, *parts: str) -> str:
        path = self.path(*parts)
        if not os.path.isfile(path):
            raise self.missing(path, "annotation file")
        return path

    def require_dir(self, *parts: str) -> str:
        path = self.path(*parts)
        if not os.path.isdir(path):
            raise self.missing(path, "image folder")
        return path

    def probe(self, splits: Dict[str, Split]) -> Dict[str, Split]:
        """Check that the first image of each split exists: catches a data.root one level off."""
        for split_name, split in splits.items():
            if split.images is None and len(split) and not os.path.isfile(split.paths[0]):
                raise self.missing(split.paths[0], f"first image of the {split_name} split")
        return splits


def read_rows(path: str, num_fields: int, skip: int = 0) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of each non-empty line of a whitespace-separated file after ``skip`` lines.

    A line with a different number of fields raises a DatasetError naming ``path:line``.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != num_fields:
                raise DatasetError(
                    f"{path}:{lineno}: expected {num_fields} whitespace-separated fields, "
                    f"got {len(fields)}: {line.rstrip()!r}"
                )
            yield lineno, fields


def parse_int(value: str, path: str, lineno: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} must be an integer, got {value!r}") from None


def unique_key(seen: dict, key, path: str, lineno: int, what: str) -> None:
    """Record ``key`` at ``lineno``; a second occurrence raises naming both lines."""
    if key in seen:
        raise DatasetError(f"{path}:{lineno}: duplicate {what} {key!r} (first at line {seen[key]})")
    seen[key] = lineno

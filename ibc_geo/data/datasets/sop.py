"""Stanford Online Products read from ``Ebay_train.txt`` / ``Ebay_test.txt`` (METHOD.md §3)."""
from __future__ import annotations

from typing import Dict

from ibc_geo.data.datasets.base import DatasetFormat, parse_int, read_rows, unique_key
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split, check_disjoint

HEADER = ["image_id", "class_id", "super_class_id", "path"]


@DATASETS.register("sop")
class SOP(DatasetFormat):
    """Stanford Online Products: the split files define the (class-disjoint) train and test sets."""

    name = "sop"
    layout = """\
    Stanford_Online_Products/     <- data.root (the folder holding Ebay_train.txt)
      Ebay_train.txt              image_id class_id super_class_id path   (header line, then rows)
      Ebay_test.txt               same columns
      bicycle_final/111085122871_0.JPG ... toaster_final/...
    """
    expected = {"train": (59551, 11318), "test": (60502, 11316)}

    def read(self) -> Dict[str, Split]:
        splits = {name: self._read_file(f"Ebay_{name}.txt") for name in ("train", "test")}
        check_disjoint(splits["train"].classes, splits["test"].classes, f"{self.root}: Ebay_train.txt vs Ebay_test.txt")
        return self.probe(splits)

    def _read_file(self, filename: str) -> Split:
        path = self.require_file(filename)
        with open(path, encoding="utf-8") as f:
            header = f.readline().split()
        if header != HEADER:
            raise DatasetError(f"{path}:1: expected the header {' '.join(HEADER)!r}, got {' '.join(header)!r}")
        paths, classes, seen = [], [], {}
        for lineno, (image_id, class_id, _super, rel) in read_rows(path, 4, skip=1):
            unique_key(seen, parse_int(image_id, path, lineno, "image_id"), path, lineno, "image_id")
            classes.append(parse_int(class_id, path, lineno, "class_id"))
            paths.append(self.path(rel))
        return Split(paths=paths, classes=classes)

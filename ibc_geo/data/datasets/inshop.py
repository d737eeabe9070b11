"""In-Shop Clothes Retrieval read from ``Eval/list_eval_partition.txt`` (METHOD.md §3)."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from ibc_geo.data.datasets.base import DatasetFormat, read_rows, unique_key
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split, check_disjoint

HEADER = ["image_name", "item_id", "evaluation_status"]
STATUSES = ("train", "query", "gallery")


@DATASETS.register("inshop")
class InShop(DatasetFormat):
    """In-Shop Clothes: ``train`` rows are the training split; ``query`` + ``gallery`` rows form the
    test split (query rows first, then gallery rows, each in file order) with ``query_mask``."""

    name = "inshop"
    layout = """\
    In-shop Clothes Retrieval Benchmark/   <- data.root (the folder holding Eval/ and Img/)
      Eval/list_eval_partition.txt   line 1: image count; line 2: image_name item_id evaluation_status;
                                     then rows: img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery
      Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...   (img.zip unpacked inside Img/, as shipped;
                                                             img/ unpacked beside Eval/ works too)
    """
    expected = {"train": (25882, 3997), "test": (26830, 3985), "query": (14218, None), "gallery": (12612, None)}

    def read(self) -> Dict[str, Split]:
        path = self.require_file("Eval", "list_eval_partition.txt")
        img = self.image_base()
        with open(path, encoding="utf-8") as f:
            count_line, header = f.readline().strip(), f.readline().split()
        try:
            count = int(count_line)
        except ValueError:
            raise DatasetError(f"{path}:1: expected the number of images, got {count_line!r}") from None
        if header != HEADER:
            raise DatasetError(f"{path}:2: expected the header {' '.join(HEADER)!r}, got {' '.join(header)!r}")

        rows = {s: ([], []) for s in STATUSES}
        seen: dict = {}
        for lineno, (name, item, status) in read_rows(path, 3, skip=2):
            if status not in rows:
                raise DatasetError(
                    f"{path}:{lineno}: unknown evaluation_status {status!r}; expected one of {', '.join(STATUSES)}"
                )
            unique_key(seen, name, path, lineno, "image_name")
            rows[status][0].append(f"{img}/{name}")
            rows[status][1].append(item)
        if len(seen) != count:
            raise DatasetError(f"{path}: line 1 announces {count} images but {len(seen)} rows follow")

        train = Split(paths=rows["train"][0], classes=rows["train"][1])
        q, g = rows["query"], rows["gallery"]
        test = Split(
            paths=q[0] + g[0],
            classes=q[1] + g[1],
            query_mask=np.concatenate([np.ones(len(q[0]), bool), np.zeros(len(g[0]), bool)]),
        )
        check_disjoint(train.classes, test.classes, f"{path}: train vs query/gallery items")
        return self.probe({"train": train, "test": test})

    def image_base(self) -> str:
        """The folder the partition's ``img/...`` names are relative to: ``Img/`` (the shipped
        ``Img/img.zip`` unpacked where it lies, as the official code expects) or, when ``img.zip``
        was unpacked at the top, ``data.root`` itself (``img/`` beside ``Eval/``)."""
        if not os.path.isdir(self.path("Img")) and os.path.isdir(self.path("img")):
            return self.root
        return self.require_dir("Img")

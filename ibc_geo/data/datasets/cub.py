"""CUB-200-2011 read from its shipped files; classes 1-100 train, 101-200 test (METHOD.md §3)."""
from __future__ import annotations

from typing import Dict

from ibc_geo.data.datasets.base import DatasetFormat, parse_int, read_rows, unique_key
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.registry import DATASETS
from ibc_geo.data.split import Split


@DATASETS.register("cub")
class CUB(DatasetFormat):
    """CUB-200-2011. ``train_test_split.txt`` is the CLASSIFICATION split and is not read.

    The first half of the classes listed in ``classes.txt`` (sorted by id: 1-100 of 200) is the
    training split, the second half (101-200) the test split; images keep ``images.txt`` order.
    """

    name = "cub"
    layout = """\
    CUB_200_2011/                 <- data.root (the folder holding images.txt)
      images.txt                  <image_id> <class_folder>/<file>.jpg
      image_class_labels.txt      <image_id> <class_id>
      classes.txt                 <class_id> <class_name>
      images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ...
    """
    expected = {"train": (5864, 100), "test": (5924, 100)}

    def read(self) -> Dict[str, Split]:
        images_txt = self.require_file("images.txt")
        labels_txt = self.require_file("image_class_labels.txt")
        classes_txt = self.require_file("classes.txt")
        images_dir = self.require_dir("images")

        rel_paths: Dict[int, str] = {}
        seen: dict = {}
        for lineno, (image_id, rel) in read_rows(images_txt, 2):
            key = parse_int(image_id, images_txt, lineno, "image_id")
            unique_key(seen, key, images_txt, lineno, "image_id")
            rel_paths[key] = rel

        class_of: Dict[int, int] = {}
        seen = {}
        for lineno, (image_id, class_id) in read_rows(labels_txt, 2):
            key = parse_int(image_id, labels_txt, lineno, "image_id")
            unique_key(seen, key, labels_txt, lineno, "image_id")
            class_of[key] = parse_int(class_id, labels_txt, lineno, "class_id")

        class_ids = []
        seen = {}
        for lineno, fields in read_rows(classes_txt, 2):
            cid = parse_int(fields[0], classes_txt, lineno, "class_id")
            unique_key(seen, cid, classes_txt, lineno, "class_id")
            class_ids.append(cid)

        if set(rel_paths) != set(class_of):
            only_images = sorted(set(rel_paths) - set(class_of))[:5]
            only_labels = sorted(set(class_of) - set(rel_paths))[:5]
            raise DatasetError(
                f"{images_txt} and {labels_txt} list different image ids "
                f"(only in images.txt: {only_images}; only in image_class_labels.txt: {only_labels})"
            )
        unknown = sorted(set(class_of.values()) - set(class_ids))
        if unknown:
            raise DatasetError(f"{labels_txt} uses class ids missing from {classes_txt}: {unknown[:5]}")

        ordered = sorted(class_ids)
        train_classes = set(ordered[: len(ordered) // 2])
        ids = sorted(rel_paths)
        splits = {}
        for name, keep in (("train", True), ("test", False)):
            chosen = [i for i in ids if (class_of[i] in train_classes) == keep]
            splits[name] = Split(
                paths=[f"{images_dir}/{rel_paths[i]}" for i in chosen],
                classes=[class_of[i] for i in chosen],
            )
        return self.probe(splits)

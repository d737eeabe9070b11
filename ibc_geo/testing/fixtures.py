"""Tiny copies of the benchmarks in their EXACT on-disk formats, for tests and demos (no download).

Each ``make_*`` writes one dataset under ``root`` and returns the folder to use as ``data.root``:

* small mode (default): ``num_classes`` classes (the first half are training classes, the rest test
  classes, as each format splits them), ``images_per_class`` images each (an int, or one int per
  class), every image a distinct ``image_size`` JPEG whose colour depends on its class
  (``images="write"``);
* full mode (``full=True``): the real number of rows and classes of each split (METHOD.md §3), with
  per-class counts in the real range, every image a hard link to ONE shared tiny JPEG
  (``images="link"``, the default there): SOP's 120,053 files take about two seconds.

Annotation files carry the real names, header lines and columns (``images.txt``, ``cars_annos.mat``
and the devkit ``.mat`` structs, ``Ebay_*.txt``, ``list_eval_partition.txt``).
"""
from __future__ import annotations

import os
import shutil
from typing import List, Sequence, Union

import numpy as np
import scipy.io
from PIL import Image

from ibc_geo.config import load_config

Counts = Union[int, Sequence[int]]

SOP_SUPER_CLASSES = ["bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa",
                     "stapler", "table", "toaster"]
INSHOP_CATEGORIES = ["WOMEN/Blouses_Shirts", "WOMEN/Dresses", "WOMEN/Tees_Tanks", "WOMEN/Skirts", "WOMEN/Denim",
                     "MEN/Denim", "MEN/Shirts_Polos", "MEN/Tees_Tanks", "MEN/Jackets_Vests", "MEN/Pants"]
INSHOP_VIEWS = ["front", "side", "back", "full"]


def spread(total: int, n: int, low: int, high: int, seed: int) -> np.ndarray:
    """``n`` deterministic pseudo-random counts in [low, high] that sum to ``total``."""
    if not n * low <= total <= n * high:
        raise ValueError(f"cannot spread {total} over {n} classes with counts in [{low}, {high}]")
    rng = np.random.default_rng(seed)
    counts = np.full(n, low, dtype=np.int64)
    extra = total - n * low
    while extra:
        room = np.flatnonzero(counts < high)
        add = rng.choice(room, size=min(extra, len(room)), replace=False)
        counts[add] += 1
        extra -= len(add)
    return counts


def _per_class(images_per_class: Counts, num_classes: int) -> List[int]:
    if isinstance(images_per_class, int):
        return [images_per_class] * num_classes
    counts = list(images_per_class)
    if len(counts) != num_classes:
        raise ValueError(f"images_per_class lists {len(counts)} counts for {num_classes} classes")
    return counts


class _ImageWriter:
    """Writes the image files: distinct class-coloured JPEGs, or hard links to one shared JPEG."""

    LINKS_PER_FILE = 50_000

    def __init__(self, root: str, mode: str, image_size: int):
        if mode not in ("write", "link"):
            raise ValueError(f"images must be 'write' or 'link', got {mode!r}")
        self.mode, self.size, self.root = mode, image_size, root
        self._dirs: set = set()
        self._links = 0

    def _image(self, class_index: int, i: int) -> Image.Image:
        base = np.random.default_rng(class_index).integers(0, 256, 3)
        noise = np.random.default_rng([class_index, i]).integers(-20, 21, (self.size, self.size, 3))
        return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))

    def __call__(self, path: str, class_index: int, i: int) -> None:
        folder = os.path.dirname(path)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        if self.mode == "write":
            self._image(class_index, i).save(path, format="JPEG")
            return
        shared = self._shared(self._links // self.LINKS_PER_FILE)
        self._links += 1
        try:
            os.link(shared, path)
        except OSError:  # a file system without hard links
            shutil.copyfile(shared, path)

    def _shared(self, n: int) -> str:
        """The n-th shared image (a new one every LINKS_PER_FILE links: ext4 caps links per file)."""
        path = os.path.join(self.root, f".fixture_shared_{n}.jpg")
        if not os.path.exists(path):
            os.makedirs(self.root, exist_ok=True)
            self._image(0, 0).save(path, format="JPEG")
        return path


def _mode(images, full: bool) -> str:
    return images or ("link" if full else "write")


def _write_lines(path: str, lines: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# CUB-200-2011 ------------------------------------------------------------------------------------

def cub_full_counts() -> List[int]:
    """Images per class 1..200 summing to 5,864 (classes 1-100) and 5,924 (101-200); real range 41-60."""
    return spread(5864, 100, 41, 60, seed=1).tolist() + spread(5924, 100, 41, 60, seed=2).tolist()


def make_cub(root: str, num_classes: int = 4, images_per_class: Counts = 3, image_size: int = 16,
             full: bool = False, images: str = None) -> str:
    """``root/CUB_200_2011`` with images.txt, image_class_labels.txt, classes.txt,
    train_test_split.txt (the classification split, unused by the loader) and images/."""
    folder = os.path.join(root, "CUB_200_2011")
    counts = cub_full_counts() if full else _per_class(images_per_class, num_classes)
    write = _ImageWriter(root, _mode(images, full), image_size)
    images_txt, labels_txt, split_txt, classes_txt = [], [], [], []
    image_id = 0
    for c, n in enumerate(counts, start=1):
        class_name = f"{c:03d}.Species_{c:03d}"
        classes_txt.append(f"{c} {class_name}")
        for i in range(n):
            image_id += 1
            rel = f"{class_name}/Species_{c:03d}_{1000 + i:04d}_{image_id}.jpg"
            images_txt.append(f"{image_id} {rel}")
            labels_txt.append(f"{image_id} {c}")
            split_txt.append(f"{image_id} {int(i % 2 == 0)}")
            write(os.path.join(folder, "images", rel), c, i)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    _write_lines(os.path.join(folder, "images.txt"), images_txt)
    _write_lines(os.path.join(folder, "image_class_labels.txt"), labels_txt)
    _write_lines(os.path.join(folder, "train_test_split.txt"), split_txt)
    _write_lines(os.path.join(folder, "classes.txt"), classes_txt)
    return folder


# Cars196 -----------------------------------------------------------------------------------------

def cars_full_counts() -> List[int]:
    """Images per class 1..196 summing to 8,054 (classes 1-98) and 8,131 (99-196)."""
    return spread(8054, 98, 24, 136, seed=3).tolist() + spread(8131, 98, 24, 136, seed=4).tolist()


def _struct(records: List[dict], fields: Sequence[str]) -> np.ndarray:
    """A 1 x N MATLAB struct array as scipy.io.savemat writes it: a structured object array."""
    arr = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, r in enumerate(records):
        arr[0, i] = tuple(r[f] for f in fields)
    return arr


def _cell(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    cell[0, :] = [np.array([s]) for s in strings]
    return cell


def _bbox(i: int, size: int) -> dict:
    return {"bbox_x1": np.array([[1 + i % 3]], np.uint16), "bbox_y1": np.array([[1]], np.uint16),
            "bbox_x2": np.array([[size]], np.uint16), "bbox_y2": np.array([[size]], np.uint16)}


def make_cars(root: str, num_classes: int = 4, images_per_class: Counts = 3, image_size: int = 16,
              full: bool = False, images: str = None, devkit: bool = False) -> str:
    """``root/stanford_cars`` as ``cars_annos.mat`` + ``car_ims/``, or (``devkit=True``) as
    ``devkit/{cars_meta,cars_train_annos,cars_test_annos,cars_test_annos_withlabels}.mat`` +
    ``cars_train/`` + ``cars_test/``. The classification split (``test`` field, devkit folders)
    mixes every class: 8,144 / 8,041 images in full mode."""
    folder = os.path.join(root, "stanford_cars")
    counts = cars_full_counts() if full else _per_class(images_per_class, num_classes)
    write = _ImageWriter(root, _mode(images, full), image_size)
    class_names = [f"Make{c:03d} Model{c:03d} Sedan {2000 + c % 13}" for c in range(1, len(counts) + 1)]
    classes = np.repeat(np.arange(1, len(counts) + 1), counts)
    rng = np.random.default_rng(5)
    classes = classes[rng.permutation(len(classes))]  # annotations are not ordered by class
    n = len(classes)
    num_test = 8041 if full else n // 2
    is_test = np.zeros(n, bool)
    is_test[rng.choice(n, num_test, replace=False)] = True
    within = np.zeros(len(counts) + 1, int)

    def image_index(c: int) -> int:
        within[c] += 1
        return within[c] - 1

    if not devkit:
        records = []
        for i, (c, t) in enumerate(zip(classes, is_test), start=1):
            rel = f"car_ims/{i:06d}.jpg"
            write(os.path.join(folder, rel), int(c), image_index(c))
            records.append({"relative_im_path": np.array([rel]), **_bbox(i, image_size),
                            "class": np.array([[c]], np.uint8 if len(counts) < 256 else np.uint16),
                            "test": np.array([[int(t)]], np.uint8)})
        os.makedirs(os.path.join(folder, "car_ims"), exist_ok=True)
        scipy.io.savemat(os.path.join(folder, "cars_annos.mat"), {
            "annotations": _struct(records, ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
                                             "class", "test"]),
            "class_names": _cell(class_names)})
        return folder

    kit = os.path.join(folder, "devkit")
    os.makedirs(kit, exist_ok=True)
    scipy.io.savemat(os.path.join(kit, "cars_meta.mat"), {"class_names": _cell(class_names)})
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    for part, keep in (("train", False), ("test", True)):
        records = []
        for j, c in enumerate(classes[is_test == keep], start=1):
            fname = f"{j:05d}.jpg"
            write(os.path.join(folder, f"cars_{part}", fname), int(c), image_index(c))
            records.append({**_bbox(j, image_size), "class": np.array([[c]], np.uint8), "fname": np.array([fname])})
        os.makedirs(os.path.join(folder, f"cars_{part}"), exist_ok=True)
        if part == "train":
            scipy.io.savemat(os.path.join(kit, "cars_train_annos.mat"), {"annotations": _struct(records, fields)})
        else:
            scipy.io.savemat(os.path.join(kit, "cars_test_annos_withlabels.mat"),
                             {"annotations": _struct(records, fields)})
            unlabelled = [{k: v for k, v in r.items() if k != "class"} for r in records]
            scipy.io.savemat(os.path.join(kit, "cars_test_annos.mat"),
                             {"annotations": _struct(unlabelled, [f for f in fields if f != "class"])})
    return folder


# Stanford Online Products ------------------------------------------------------------------------

def sop_full_counts() -> List[int]:
    """Images per class summing to 59,551 over 11,318 train and 60,502 over 11,316 test classes (2-12 each)."""
    return spread(59551, 11318, 2, 12, seed=6).tolist() + spread(60502, 11316, 2, 12, seed=7).tolist()


def make_sop(root: str, num_classes: int = 4, images_per_class: Counts = 3, image_size: int = 16,
             full: bool = False, images: str = None) -> str:
    """``root/Stanford_Online_Products`` with Ebay_train.txt, Ebay_test.txt, Ebay_info.txt and the
    ``<super_class>_final/<product>_<k>.JPG`` images; train classes are ids 1..C/2."""
    folder = os.path.join(root, "Stanford_Online_Products")
    counts = sop_full_counts() if full else _per_class(images_per_class, num_classes)
    num_train = 11318 if full else len(counts) // 2
    write = _ImageWriter(root, _mode(images, full), image_size)
    header = "image_id class_id super_class_id path"
    rows = {"train": [header], "test": [header]}
    info = [header]
    image_id = 0
    for part, class_range in (("train", range(num_train)), ("test", range(num_train, len(counts)))):
        for offset, c in enumerate(class_range):
            super_id = offset * len(SOP_SUPER_CLASSES) // len(class_range) + 1  # contiguous blocks
            product = 111085122871 + 7919 * c
            for k in range(counts[c]):
                image_id += 1
                rel = f"{SOP_SUPER_CLASSES[super_id - 1]}_final/{product}_{k}.JPG"
                line = f"{image_id} {c + 1} {super_id} {rel}"
                rows[part].append(line)
                info.append(line)
                write(os.path.join(folder, rel), c + 1, k)
    for name in SOP_SUPER_CLASSES:
        os.makedirs(os.path.join(folder, f"{name}_final"), exist_ok=True)
    _write_lines(os.path.join(folder, "Ebay_train.txt"), rows["train"])
    _write_lines(os.path.join(folder, "Ebay_test.txt"), rows["test"])
    _write_lines(os.path.join(folder, "Ebay_info.txt"), info)
    return folder


# In-Shop Clothes Retrieval -----------------------------------------------------------------------

def inshop_full_counts() -> tuple:
    """(train counts of 3,997 items summing to 25,882; query and gallery counts of 3,985 test items
    summing to 14,218 and 12,612, at least one of each per item)."""
    return (spread(25882, 3997, 2, 16, seed=8).tolist(), spread(14218, 3985, 1, 8, seed=9).tolist(),
            spread(12612, 3985, 1, 8, seed=10).tolist())


def make_inshop(root: str, num_classes: int = 4, images_per_class: Counts = 4, image_size: int = 16,
                full: bool = False, images: str = None) -> str:
    """``root/In-shop Clothes Retrieval Benchmark`` with Eval/list_eval_partition.txt and
    ``Img/img/<GENDER>/<category>/id_<8 digits>/<NN>_<k>_<view>.jpg``. Small mode: the first half of the
    items are training items; each test item's images alternate query, gallery (so it needs >= 2)."""
    folder = os.path.join(root, "In-shop Clothes Retrieval Benchmark")
    if full:
        train_counts, query_counts, gallery_counts = inshop_full_counts()
        train_items = [["train"] * n for n in train_counts]
        test_items = [["query"] * q + ["gallery"] * g for q, g in zip(query_counts, gallery_counts)]
        kinds = np.random.default_rng(11).permutation([True] * len(train_items) + [False] * len(test_items))
    else:
        counts = _per_class(images_per_class, num_classes)
        half = len(counts) // 2
        if min(counts[half:], default=2) < 2:
            raise ValueError("make_inshop: each test item needs >= 2 images (a query and a gallery image)")
        train_items = [["train"] * n for n in counts[:half]]
        test_items = [["query" if k % 2 == 0 else "gallery" for k in range(n)] for n in counts[half:]]
        kinds = [True] * len(train_items) + [False] * len(test_items)
        kinds[: 2 * min(len(train_items), len(test_items))] = [True, False] * min(len(train_items), len(test_items))
    write = _ImageWriter(root, _mode(images, full), image_size)
    rows = []
    train_iter, test_iter = iter(train_items), iter(test_items)
    for item, is_train in enumerate(kinds):
        item_id = f"id_{item + 1:08d}"
        category = INSHOP_CATEGORIES[item % len(INSHOP_CATEGORIES)]
        statuses = next(train_iter) if is_train else next(test_iter)
        for k, status in enumerate(statuses):
            name = f"img/{category}/{item_id}/{k // 4 + 1:02d}_{k % 4 + 1}_{INSHOP_VIEWS[k % 4]}.jpg"
            rows.append(f"{name:<70}{item_id:<16}{status}")
            write(os.path.join(folder, "Img", name), item, k)
    os.makedirs(os.path.join(folder, "Img"), exist_ok=True)
    _write_lines(os.path.join(folder, "Eval", "list_eval_partition.txt"),
                 [str(len(rows)), "image_name item_id evaluation_status"] + rows)
    return folder


# Image folders -----------------------------------------------------------------------------------

def make_imagefolder(root: str, num_classes: int = 4, images_per_class: Counts = 3, image_size: int = 16,
                     val_classes: int = 0) -> str:
    """``root/imagefolder/{train,test}/class_<3 digits>/<3 digits>.jpg``: the first half of the classes in train/,
    the rest in test/; with ``val_classes`` > 0 that many more classes in ``val/``."""
    folder = os.path.join(root, "imagefolder")
    counts = _per_class(images_per_class, num_classes + val_classes)
    half = num_classes // 2
    write = _ImageWriter(root, "write", image_size)
    for c, n in enumerate(counts):
        part = "train" if c < half else "test" if c < num_classes else "val"
        for i in range(n):
            write(os.path.join(folder, part, f"class_{c:03d}", f"{i:03d}.jpg"), c, i)
    return folder


def fixture_config(name: str, root: str = "", *overrides):
    """A checked config for dataset ``name`` at ``root``, sized for tests: 16-pixel images,
    no worker processes, ``eval.selection test`` without a validation split (override with ``KEY VALUE`` pairs)."""
    pairs = ["data.name", name, "data.root", str(root), "eval.selection", "test", "data.val_classes", "0", "data.image_size", "16",
             "data.workers", "0"]
    return load_config(None, pairs + [str(o) for o in overrides])

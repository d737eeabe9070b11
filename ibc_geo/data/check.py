"""Verify a dataset directory: annotation files, counts per split, missing / unreadable images.

The logic of ``tools/check_dataset.py``: :func:`check_dataset` returns a :class:`CheckReport`
(a summary table and the list of problems); :mod:`ibc_geo.cli.check_dataset` prints it and
returns the exit code.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

from PIL import Image

from ibc_geo.data.build import dataset_format, with_validation
from ibc_geo.data.errors import DatasetError
from ibc_geo.data.image import to_rgb

MAX_LISTED = 20  # bad files listed by name; the rest are counted


@dataclass
class SplitRow:
    split: str
    images: int
    classes: int
    expected_images: Optional[int] = None
    expected_classes: Optional[int] = None
    missing: int = 0
    unreadable: int = 0


@dataclass
class CheckReport:
    name: str
    root: str
    rows: List[SplitRow] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> str:
        header = ["split", "images", "classes", "expected images", "expected classes", "missing", "unreadable"]
        lines = [header] + [[r.split, str(r.images), str(r.classes),
                             "-" if r.expected_images is None else str(r.expected_images),
                             "-" if r.expected_classes is None else str(r.expected_classes),
                             str(r.missing), str(r.unreadable)] for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
                for line in lines]
        return "\n".join(text)

    def summary(self) -> str:
        out = [f"dataset {self.name!r} at {self.root or '(built in)'}", self.table(),
               f"image files checked: {self.files_checked}"]
        if self.ok:
            out.append("OK")
        else:
            out.append(f"{len(self.problems)} problem(s):")
            out += [f"  - {p}" for p in self.problems]
        return "\n".join(out)


def image_problem(path: str, decode: bool = True) -> Optional[str]:
    """None if ``path`` is a readable image, else why not ('missing', 'empty file', the PIL error)."""
    if not os.path.isfile(path):
        return "missing"
    if os.path.getsize(path) == 0:
        return "empty file"
    if decode:
        try:
            with Image.open(path) as img:
                img.load()  # full decode: truncated files fail here, not in verify()
                to_rgb(img)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
    return None


def check_dataset(cfg, decode: bool = True, expected_counts: bool = True, threads: int = 0) -> CheckReport:
    """Check ``cfg.data``: read the annotations, count every split, test every image file.

    ``decode`` False only tests presence and non-zero size. ``expected_counts`` compares the
    train/test counts with the complete dataset's (METHOD.md §3; off for subsets).
    """
    report = CheckReport(cfg.data.name, cfg.data.root)
    try:
        fmt = dataset_format(cfg)
        shipped = fmt.read()
        splits = with_validation(shipped, cfg.data.val_classes, cfg.seed, fmt.root)
    except (DatasetError, KeyError) as e:
        report.problems.append(str(e).strip("'\""))
        return report
    report.root = fmt.root

    # Rows: the splits as shipped (compared with the complete dataset), In-Shop's query and
    # gallery, then the training classes left and the validation classes held out (if any).
    views = dict(shipped)
    test = shipped["test"]
    if test.query_mask is not None:
        views["query"] = test.subset(test.query_mask)
        views["gallery"] = test.subset(~test.query_mask)
    if "val" not in shipped and "val" in splits:
        views["train - val"] = splits["train"]
        views["val (held out)"] = splits["val"]

    paths = sorted({p for s in shipped.values() if s.images is None for p in s.paths})
    bad = {}
    if paths:
        with ThreadPoolExecutor(max_workers=threads or max(1, min(8, os.cpu_count() or 1))) as pool:
            for path, problem in zip(paths, pool.map(lambda p: image_problem(p, decode), paths, chunksize=256)):
                if problem is not None:
                    bad[path] = problem
    report.files_checked = len(paths)

    for name, split in views.items():
        exp_images, exp_classes = fmt.expected.get(name, (None, None)) if expected_counts else (None, None)
        row = SplitRow(name, len(split), len(split.class_set), exp_images, exp_classes)
        row.missing = sum(bad.get(p) == "missing" for p in split.paths)
        row.unreadable = sum(p in bad and bad[p] != "missing" for p in split.paths)
        report.rows.append(row)
        if exp_images is not None and row.images != exp_images:
            report.problems.append(f"{name}: {row.images} images, the complete dataset has {exp_images} "
                                   f"(use --subset for a partial copy)")
        if exp_classes is not None and row.classes != exp_classes:
            report.problems.append(f"{name}: {row.classes} classes, the complete dataset has {exp_classes}")

    for path, problem in list(bad.items())[:MAX_LISTED]:
        report.problems.append(f"{'missing image' if problem == 'missing' else 'unreadable image'} {path}"
                               + ("" if problem == "missing" else f" ({problem})"))
    if len(bad) > MAX_LISTED:
        report.problems.append(f"... and {len(bad) - MAX_LISTED} more missing or unreadable images")
    return report

"""``ibc-check-dataset`` / ``python tools/check_dataset.py --cfg CFG [--no-decode] [--subset] [KEY VALUE ...]``."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/check_dataset.py",
        description="Verify a dataset directory: files present, counts per split, unreadable or truncated "
                    "images. Exit code 1 if anything is wrong.")
    parser.add_argument("--no-decode", action="store_true",
                        help="only test that each image exists and is not empty (fast)")
    parser.add_argument("--subset", action="store_true",
                        help="do not compare counts with the complete dataset's (METHOD.md §3)")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 if the dataset is complete and readable, else 1."""
    args = build_parser().parse_intermixed_args(argv)
    cfg = config_from_args(args)
    from ibc_geo.data.check import check_dataset

    report = check_dataset(cfg, decode=not args.no_decode, expected_counts=not args.subset)
    print(report.summary())
    return 0 if report.ok else 1


def console() -> int:
    return run(main)

"""What every tool shares: logging, ``--cfg`` / ``--print-config`` / ``KEY VALUE`` arguments, and
the one place where a user's error becomes a one-line message and an exit code.

This module imports nothing heavy at import time, so that ``--help`` needs no torch.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

#: The config schema's sections, for the tools' ``--help`` (a test checks them against the schema).
CONFIG_SECTIONS = ("data", "sampler", "model", "graph", "mpn", "loss", "train", "eval")

CONFIG_EPILOG = (
    "Config keys come in sections: " + ", ".join(CONFIG_SECTIONS) + " (and output_dir, seed, device, "
    "deterministic). Every key, its default and a one-line comment: ibc_geo/config/schema.py; the "
    "resolved config of a file: python -m ibc_geo.config --cfg FILE [KEY VALUE ...]. Overrides are "
    "KEY VALUE pairs, e.g. graph.topology knn graph.k 5 train.epochs 10."
)


def setup_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr, so that stdout stays clean for ``--print-config`` and tables."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU features at INFO


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run a tool's ``main(argv)``; return its exit code (0 for ``None``). A
    :class:`~ibc_geo.utils.errors.UserError` prints ``error: <message>`` on stderr and returns its
    ``exit_code``; any other exception is a bug and keeps its traceback."""
    from ibc_geo.utils.errors import UserError

    setup_logging()
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return e.exit_code
    return 0 if code is None else int(code)


def user_message(error: BaseException) -> str:
    """The error's own message; one re-raised from a DataLoader worker process carries the worker's
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): keep only the
    original message, which is what the user can act on."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = type(error).__name__
        for marker in (f"{type(error).__module__}.{name}: ", f"{name}: "):
            if marker in text:
                return text.rsplit(marker, 1)[1].strip()
    return text


def add_config_arguments(parser: argparse.ArgumentParser, cfg_required: bool = False) -> None:
    """``--cfg``, ``--print-config`` and positional ``KEY VALUE`` pairs; parse with
    ``parser.parse_intermixed_args()`` so that options and pairs may come in any order."""
    parser.add_argument("--cfg", required=cfg_required, metavar="FILE", help="YAML config (may inherit _BASE_)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # nargs="*" with parse_intermixed_args: options may come before, between or after the pairs.
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                        help="config overrides, e.g. graph.topology knn graph.k 5")
    if parser.epilog is None:
        parser.epilog = CONFIG_EPILOG


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ckpt CKPT`` or ``--init``: the model of the tools that load a run's model."""
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--ckpt", metavar="CKPT", help="checkpoint of the run whose config is --cfg")
    model.add_argument("--init", action="store_true",
                       help="the model as the config initialises it (ImageNet or seeded random weights)")


def require_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The tools that load a run's model need ``--cfg RUN/config.yaml`` and ``--ckpt`` or ``--init``."""
    if not args.cfg:
        parser.error("--cfg RUN/config.yaml is required")
    if not (args.ckpt or args.init):
        parser.error("one of the arguments --ckpt --init is required")


def config_from_args(args: argparse.Namespace):
    """The config of parsed ``args`` (a bad one raises :class:`~ibc_geo.config.ConfigError`);
    on ``--print-config`` it prints the config and exits 0."""
    from ibc_geo.config import load_config, to_yaml

    cfg = load_config(args.cfg, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        sys.exit(0)
    return cfg

"""Command-line glue shared by every tool: ``--cfg FILE``, ``--print-config``, ``KEY VALUE ...``."""
from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig

from ibc_geo.config.loader import ConfigError, load_config, to_yaml


def add_config_arguments(parser: argparse.ArgumentParser, cfg_required: bool = False) -> None:
    """``--cfg``, ``--print-config`` and positional ``KEY VALUE`` pairs; parse with
    ``parser.parse_intermixed_args()`` so that options and pairs may come in any order."""
    parser.add_argument("--cfg", required=cfg_required, metavar="FILE", help="YAML config (may inherit _BASE_)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # nargs="*" with parse_intermixed_args: options may come before, between or after the pairs.
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                        help="config overrides, e.g. graph.topology knn graph.k 5")


def config_from_args(args: argparse.Namespace) -> DictConfig:
    """Load the config of parsed ``args``; print it and exit 0 on ``--print-config``.

    A bad config exits with code 2 and a one-paragraph message instead of a traceback.
    """
    try:
        cfg = load_config(args.cfg, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    if args.print_config:
        print(to_yaml(cfg), end="")
        sys.exit(0)
    return cfg


def run_config_cli(argv=None) -> None:
    """``python -m ibc_geo.config --cfg FILE [KEY VALUE ...]``: print the resolved config."""
    parser = argparse.ArgumentParser(prog="python -m ibc_geo.config", description=run_config_cli.__doc__)
    add_config_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    args.print_config = True
    config_from_args(args)

"""``ibc-train`` / ``python tools/train.py --cfg FILE [KEY VALUE ...]``: train one run."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/train.py",
        description="Train backbone and message passing network end to end into output_dir "
                    "(config.yaml, log.txt, TensorBoard events, checkpoints/, metrics.json).")
    add_config_arguments(parser, cfg_required=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    cfg = config_from_args(build_parser().parse_intermixed_args(argv))
    from ibc_geo.engine import train
    from ibc_geo.utils.errors import UserError
    from ibc_geo.utils.run_dir import RunDir

    try:
        train(cfg)
    except KeyboardInterrupt:
        run_dir = RunDir(cfg.output_dir)
        kept = (f"{run_dir.last} holds the last finished epoch" if run_dir.last.is_file()
                else "no epoch had finished, so there is nothing to resume")
        error = UserError(f"interrupted; {kept}. Continue with: python tools/train.py --cfg "
                          f"{run_dir.config} train.resume true")
        error.exit_code = 130
        raise error from None


def console() -> int:
    return run(main)

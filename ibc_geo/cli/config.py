"""``python -m ibc_geo.config --cfg FILE [KEY VALUE ...]``: print the resolved config."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ibc_geo.cli.common import add_config_arguments, config_from_args, run


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ibc_geo.config",
                                     description="Print the resolved config: schema defaults < --cfg "
                                                 "file (and its _BASE_ chain) < KEY VALUE overrides.")
    add_config_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    args.print_config = True
    config_from_args(args)


def console() -> int:
    return run(main)

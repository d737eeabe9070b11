"""Train ibc_geo: ``python tools/train.py --cfg configs/sop.yaml [KEY VALUE ...]``."""
import argparse

from ibc_geo.config import add_config_arguments, config_from_args
from ibc_geo.engine import train
from ibc_geo.utils.cli import run_tool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser, cfg_required=False)
    cfg = config_from_args(parser.parse_intermixed_args())
    train(cfg)


if __name__ == "__main__":
    run_tool(main)

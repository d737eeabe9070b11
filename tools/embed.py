"""``ibc-embed`` / ``python tools/embed.py --cfg RUN/config.yaml (--ckpt CKPT | --init) (--split SPLIT | --images DIR_OR_TXT) --out E.npz``: embed images."""
import sys

from ibc_geo.cli import embed
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(embed.main))

"""``ibc-train`` / ``python tools/train.py --cfg FILE [KEY VALUE ...]``: train one run."""
import sys

from ibc_geo.cli import train
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(train.main))

"""``ibc-check-dataset`` / ``python tools/check_dataset.py --cfg CFG [--no-decode] [--subset] [KEY VALUE ...]``."""
import sys

from ibc_geo.cli import check_dataset
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(check_dataset.main))

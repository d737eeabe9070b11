"""``ibc-search`` / ``python tools/search.py --gallery E.npz (--query IMG ... --cfg CFG --ckpt CKPT | --query-ids I ...) --k K``: search a gallery."""
import sys

from ibc_geo.cli import search
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(search.main))

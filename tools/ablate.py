"""``ibc-ablate`` / ``python tools/ablate.py``: train every point x seed of an ablation grid, then tabulate."""
import sys

from ibc_geo.cli.ablate import main, split_seeds  # noqa: F401  (split_seeds: the tool's own helper)
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(main))

"""Evaluate a checkpoint, the untrained model, or saved embeddings: ``python tools/eval.py --help``."""
import sys

from ibc_geo.cli import eval as eval_tool
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(eval_tool.main))

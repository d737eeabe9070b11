"""Evaluate a checkpoint, the untrained model, or saved embeddings: ``python tools/eval.py --help``."""
import sys

from ibc_geo.evaluation.cli import main
from ibc_geo.utils.cli import run_tool

if __name__ == "__main__":
    run_tool(lambda: sys.exit(main()))

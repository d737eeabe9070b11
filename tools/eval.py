"""Evaluate a checkpoint or saved embeddings: ``python tools/eval.py --help`` (see ibc_geo/evaluation/cli.py)."""
import sys

from ibc_geo.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())

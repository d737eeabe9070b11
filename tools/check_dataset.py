"""Verify a dataset directory and print a summary table; exit code 1 if anything is wrong.

    python tools/check_dataset.py --cfg configs/cub.yaml data.root /data/CUB_200_2011
    python tools/check_dataset.py --no-decode --cfg configs/sop.yaml   # presence only, fast
"""
import sys

from ibc_geo.data.check import main

if __name__ == "__main__":
    sys.exit(main())

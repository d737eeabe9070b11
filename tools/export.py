"""``ibc-export`` / ``python tools/export.py --cfg RUN/config.yaml --ckpt CKPT --format torchscript|onnx --out FILE``: export the embedder."""
import sys

from ibc_geo.cli import export
from ibc_geo.cli.common import run

if __name__ == "__main__":
    sys.exit(run(export.main))

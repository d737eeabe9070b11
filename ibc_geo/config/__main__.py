"""``python -m ibc_geo.config --cfg FILE [KEY VALUE ...]``: an entry point (imported by nothing),
so calling up into the command-line layer here keeps the layering."""
import sys

from ibc_geo.cli import config
from ibc_geo.cli.common import run

sys.exit(run(config.main))

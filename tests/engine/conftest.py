import pytest

from ibc_geo.config import load_config
from tiny_run import TINY

@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides, out="run"):
        return load_config(None, TINY + ["output_dir", str(tmp_path / out)] + list(overrides))

    return make

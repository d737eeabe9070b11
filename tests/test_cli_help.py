"""Every tool's --help: instant (parsed before torch is imported) and pointing at the config keys."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_HEAVY = ("import sys, runpy\n"
               "for name in ('torch', 'numpy', 'omegaconf', 'faiss', 'torch_geometric'):\n"
               "    sys.modules[name] = None  # any import of them now fails\n"
               "sys.argv = [sys.argv[1], '--help']\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.parametrize("tool", ["train.py", "eval.py", "ablate.py", "check_dataset.py"])
def test_help_needs_no_torch_and_names_the_config(tool):
    r = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, os.path.join(ROOT, "tools", tool)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "ibc_geo/config/schema.py" in r.stdout
    assert "python -m ibc_geo.config" in r.stdout and "sampler" in r.stdout
    assert ":class:" not in r.stdout and "``" not in r.stdout  # no reST markup

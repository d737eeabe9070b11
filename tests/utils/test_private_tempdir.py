"""PyG's generated propagate file goes into a folder of the process, removed at exit (issue 22, item 12)."""
import glob
import os
import subprocess
import sys
import tempfile

SCRIPT = """
import os, sys
from torch_geometric.nn import MessagePassing
from ibc_geo.utils.tempdir import private_tempdir

class ProbeLayer{tag}(MessagePassing):
    def message(self, x_j):
        return x_j

with private_tempdir() as folder:
    ProbeLayer{tag}()
print(folder)
print(len([f for f in os.listdir(folder) if "ProbeLayer{tag}_propagate" in f]))
"""


def test_the_generated_propagate_file_is_removed_at_exit(tmp_path):
    tag = str(os.getpid())
    script = tmp_path / "probe.py"  # PyG reads the layer's source: a file, not python -c
    script.write_text(SCRIPT.format(tag=tag))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder, count = proc.stdout.split()
    assert count == "1"  # PyG wrote it there, not into /tmp itself ...
    assert not os.path.exists(folder)  # ... and it went with the process
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"*ProbeLayer{tag}_propagate*")) == []


def test_building_and_scripting_the_attention_layer_leaves_no_file_in_the_temp_folder(tmp_path):
    """IntraBatchAttention builds its MessagePassing base inside private_tempdir: with TMPDIR set to
    an empty folder, a process that builds (and TorchScript-compiles) the layer leaves it empty."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import torch, warnings; warnings.simplefilter('ignore');"
            "from ibc_geo.nn import IntraBatchAttention;"
            "m = IntraBatchAttention(8, heads=2).eval(); s = torch.jit.script(m);"
            "x = torch.randn(4, 8); e = torch.tensor([[0, 1, 2], [1, 2, 3]]);"
            "print(bool(torch.allclose(s(x, e), m(x, e))))")
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "True"
    assert [p for p in tmp.rglob("*") if "propagate" in p.name] == []

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

"""A per-process temporary folder, removed when the process exits.

PyG's ``MessagePassing.__init__`` renders its ``propagate`` template into
``tempfile.gettempdir()/<module>_<Class>_propagate_*.py`` with ``delete=False`` (once per class and
process; TorchScript reads the source back later), so every process that builds a layer leaves a
file in ``/tmp``. Building the layer inside :func:`private_tempdir` puts that file into a folder of
this process that goes at exit::

    with private_tempdir():
        super().__init__(aggr="add", node_dim=0, **kwargs)
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Optional

_folder: Optional[str] = None
_owner: Optional[int] = None


def process_tempdir() -> str:
    """This process's own temporary folder (created once, removed at exit; a forked child gets its own)."""
    global _folder, _owner
    if _folder is None or _owner != os.getpid() or not os.path.isdir(_folder):
        _folder = tempfile.mkdtemp(prefix=f"ibc_geo_{os.getpid()}_")
        _owner = os.getpid()
        atexit.register(_remove, _folder, _owner)
    return _folder


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def private_tempdir() -> Iterator[str]:
    """Within the block, ``tempfile`` creates its files in :func:`process_tempdir`."""
    folder = process_tempdir()
    previous = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = previous

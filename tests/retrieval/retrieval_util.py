"""Helpers of tests/retrieval (a module of its own name: ``conftest`` is not importable by name)."""
import importlib
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _tiny():
    """tests/engine/tiny_run.py's TINY, loaded by path (that folder is not on sys.path here)."""
    spec = importlib.util.spec_from_file_location("_tiny_run_for_retrieval", os.path.join(HERE, "..", "engine", "tiny_run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TINY


TINY = _tiny()


def cli(tool: str, *argv):
    """Run ``ibc_geo.cli.<tool>.main`` in this process as the command line does; its exit code
    (stdout and stderr: the caller's capsys)."""
    from ibc_geo.cli.common import run

    module = importlib.import_module(f"ibc_geo.cli.{tool}")
    return run(module.main, [str(a) for a in argv])

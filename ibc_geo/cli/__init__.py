"""The command-line layer, on top of everything else: each tool's parsing and ``main(argv)``.

``ibc_geo.cli.{train,eval,ablate,check_dataset,config}`` are the tools; ``tools/*.py``, the
``ibc-*`` console scripts and ``python -m ibc_geo.config`` call their ``main``. Each tool parses its
arguments before importing torch (``--help`` is instant) and lets :func:`run` turn a
:class:`~ibc_geo.utils.errors.UserError` into one line and its exit code.
"""
from ibc_geo.cli.common import run, setup_logging

__all__ = ["run", "setup_logging"]

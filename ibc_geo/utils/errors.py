"""The one error type for what a user did wrong, and its exit code.

Every error caused by the user's input (a config key, a data folder, a checkpoint file, a flag,
an output folder, a diverging run) derives from :class:`UserError`. The command-line layer
(:func:`ibc_geo.cli.run`) turns it into one line, ``error: <message>``, and the process exit code
``exit_code``; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix from its message alone (it names the key, file or value)."""

    #: The exit code of a tool that stops with this error: 2 for bad input, 1 for a run that failed.
    exit_code: int = 2


class DivergedError(UserError):
    """Training diverged: a loss, a weight or an embedding is NaN or infinite (exit code 1)."""

    exit_code = 1

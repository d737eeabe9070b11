"""The one error type of the data package, and the message shown when a dataset is not where expected."""
from __future__ import annotations

from ibc_geo.utils.errors import UserError

CHECK_COMMAND = "python tools/check_dataset.py --cfg CFG data.name {name} data.root {root}"


class DatasetError(UserError, ValueError):
    """A dataset that cannot be read: missing root or file, malformed annotation, bad split."""


def missing_path_error(path: str, what: str, name: str, root: str, layout: str) -> DatasetError:
    """The error for a missing ``path``: names it, shows the expected layout and the check command."""
    return DatasetError(
        f"{what} not found: {path}\n"
        f"data.name {name!r} expects data.root ({root!r}) to be laid out as:\n{layout.rstrip()}\n"
        f"See datasets/README.md; verify with: {CHECK_COMMAND.format(name=name, root=root or 'DIR')}"
    )

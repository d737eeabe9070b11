"""The one error type of the data package, and the message shown when a dataset is not where expected."""
from __future__ import annotations

import os
from typing import Optional

from ibc_geo.utils.errors import UserError

CHECK_COMMAND = "python tools/check_dataset.py --cfg CFG data.name {name} data.root {root}"


class DatasetError(UserError, ValueError):
    """A dataset that cannot be read: missing root or file, malformed annotation, bad split."""


def root_one_level_off(path: str, root: str) -> Optional[str]:
    """The folder one level above ``root``, or the one subfolder of it, under which ``path``'s
    part below ``root`` exists: what ``data.root`` was likely meant to be (None if not found or ambiguous)."""
    if not root or not os.path.isdir(root):
        return None
    rel = os.path.relpath(path, root)
    if rel.startswith(os.pardir):
        return None
    parent = os.path.dirname(os.path.abspath(root))
    found = [parent] if os.path.exists(os.path.join(parent, rel)) else []
    try:
        subs = sorted(e.path for e in os.scandir(root) if e.is_dir())
    except OSError:
        subs = []
    found += [d for d in subs if os.path.exists(os.path.join(d, rel))]
    return found[0] if len(found) == 1 else None


def missing_path_error(path: str, what: str, name: str, root: str, layout: str) -> DatasetError:
    """The error for a missing ``path``: names it, suggests ``data.root`` one level up or down when
    the file is there, shows the expected layout and the check command."""
    meant = root_one_level_off(path, root)
    hint = f"it is under {meant!r}: did you mean data.root {meant}?\n" if meant else ""
    return DatasetError(
        f"{what} not found: {path}\n{hint}"
        f"data.name {name!r} expects data.root ({root!r}) to be laid out as:\n{layout.rstrip()}\n"
        f"See datasets/README.md; verify with: {CHECK_COMMAND.format(name=name, root=root or 'DIR')}"
    )

"""Every file a tool or a run writes goes through :func:`atomic_write`.

* **Atomic**: the bytes go to a temporary file in the destination's own folder, which is fsynced and
  then renamed onto the destination, so a crash never leaves half a file behind.
* **Never replaces what the user did not ask to replace**: with ``overwrite=False`` an existing
  file is refused by name (and the final rename cannot clobber a file that appeared meanwhile).
* **One line for what the system refuses**: a read-only or forbidden folder, a full disk, a folder
  where a file should be, become an :class:`OutputError` naming the path and the cause.

Tools call :func:`check_output` for each output before their expensive work (an existing file, one
of the tool's own inputs, a run's own files, a folder that cannot be written, too little free
space are known in advance), then :func:`atomic_write` at the end.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable, Optional

from ibc_geo.utils.errors import UserError


class OutputError(UserError):
    """An output file that may not or cannot be written; the message names it and the cause."""


#: errno -> the cause in words.
_CAUSES = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EFBIG: "file too large",
}


def describe_os_error(error: OSError) -> str:
    """The cause of an OSError in a few words (``read-only file system``, ``no space left on device``)."""
    if error.errno in _CAUSES:
        return _CAUSES[error.errno]
    return (error.strerror or str(error) or type(error).__name__).lower()


def output_error(path: str | os.PathLike, error: OSError, doing: str = "cannot write") -> OutputError:
    """An :class:`OutputError` ``"<doing> <path>: <cause>"``; an ENOSPC one keeps its errno."""
    out = OutputError(f"{doing} {os.fspath(path)}: {describe_os_error(error)}")
    out.errno = error.errno
    return out


def _existing_folder(path: str) -> str:
    """The nearest folder of ``path`` (itself excluded) that exists."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[Optional[str]] = (),
                 flag: str = "--overwrite", size: int = 0) -> str:
    """Refuse, before any work, an output that :func:`atomic_write` would refuse or fail on; returns
    ``path`` as given. Raises :class:`OutputError` when ``path``

    * is one of ``inputs`` (the tool's own input files; also through links), even with ``overwrite``;
    * is one of a training run's own files (``config.yaml``, ``log.txt``, ``metrics.json``,
      checkpoints, TensorBoard events: :meth:`~ibc_geo.utils.run_dir.RunDir.owns`), even with ``overwrite``;
    * is a folder, or exists and ``overwrite`` is false (``flag`` is the switch named in the message);
    * lies in a folder that cannot be created or written (read-only, permissions, a file in the way);
    * needs ``size`` bytes and the folder's file system has less free.
    """
    from ibc_geo.utils.run_dir import RunDir

    path = os.fspath(path)
    inputs = [os.fspath(source) for source in inputs if source]
    exists = os.path.exists(path)
    names = {os.path.abspath(path), os.path.realpath(path)}
    for i, source in enumerate(inputs):
        # every input by name (cheap, also for a million images); the first ones also through links
        same = os.path.abspath(source) in names or (i < 16 and exists and os.path.exists(source)
                                                      and _same_file(path, source))
        if same:
            raise OutputError(f"refusing to write {path}: it is an input of this command ({source}); "
                              f"choose another output file")
    owner = RunDir.owner_of(path)
    if owner is not None:
        raise OutputError(f"refusing to write {path}: it is one of the files of the training run in {owner.root} "
                          f"(config.yaml, log.txt, checkpoints, metrics.json belong to the run); choose another "
                          f"output file")
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a folder, not a file; name a file inside it")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"refusing to replace {path}: it exists (pass {flag} to replace it)")
    folder = _existing_folder(path)
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    try:  # the truthful test of a folder: create (and remove) a file in it
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise output_error(path, e) from None
    if size:
        free = shutil.disk_usage(folder).free
        if free < size:
            raise OutputError(f"cannot write {path}: no space left on device (it needs about {size / 2**20:.1f} MiB, "
                              f"{folder} has {free / 2**20:.1f} MiB free)")
    return path


def check_writable_folder(folder: str | os.PathLike, what: str = "output_dir") -> None:
    """Refuse, creating nothing, a folder that could not be made or written: the nearest existing
    one of ``folder`` and its parents must take a new file."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"cannot create {what} {folder}: a file of that name exists")
    existing = folder if os.path.isdir(folder) else _existing_folder(folder)
    if not os.path.isdir(existing):
        raise OutputError(f"cannot create {what} {folder}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise output_error(folder, e, f"cannot create {what}" if existing != folder else f"cannot write {what}") from None


def check_free_space(folder: str | os.PathLike, size: int, what: str) -> None:
    """Refuse, before the work, a folder (or its nearest existing parent) whose file system has
    fewer than ``size`` bytes free for ``what``."""
    folder = os.fspath(folder)
    existing = folder if os.path.isdir(folder) else _existing_folder(folder)
    free = _free_bytes(existing)
    if free is not None and free < size:
        raise OutputError(f"cannot write {folder}: no space left on device for {what} (about "
                          f"{size / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)")


def check_distinct(outputs: Iterable[Optional[str]]) -> None:
    """Two outputs of one command may not be the same file."""
    seen: dict = {}
    for path in outputs:
        if not path:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise OutputError(f"{seen[key]} and {path} are the same file; give each output its own name")
        seen[key] = path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = True,
                 flag: str = "--overwrite") -> None:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, fsync it, then rename it onto
    ``path`` (atomic on POSIX). With ``overwrite`` false an existing ``path`` is refused (also one
    that appears while ``write`` runs: the file is linked into place, which never replaces).

    Any OSError of the file system (read-only, permissions, a full disk, a folder in the way)
    becomes an :class:`OutputError` naming ``path`` and the cause; the temporary file is removed
    whatever happens. Errors raised by ``write`` itself, other than OSError, pass unchanged.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a folder, not a file; name a file inside it")
    if not overwrite and os.path.lexists(path):
        raise OutputError(f"refusing to replace {path}: it exists (pass {flag} to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise output_error(path, e) from None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with EEXIST instead of replacing
            except FileExistsError:
                raise OutputError(f"refusing to replace {path}: it exists (pass {flag} to replace it)") from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(path):  # a file system without hard links
                    raise OutputError(f"refusing to replace {path}: it exists (pass {flag} to replace it)") from None
                os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from None
    except RuntimeError as e:
        # torch.save reports a full disk as "RuntimeError: [enforce fail at inline_container.cc] ..."
        free = _free_bytes(folder)
        if free is not None and free < 1 << 20:
            raise OutputError(f"cannot write {path}: no space left on device ({free} bytes free in {folder})") from None
        raise
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _free_bytes(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True, flag: str = "--overwrite") -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write, overwrite=overwrite, flag=flag)


def atomic_write_json(path: str | os.PathLike, data: Any, overwrite: bool = True, flag: str = "--overwrite") -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", overwrite=overwrite, flag=flag)

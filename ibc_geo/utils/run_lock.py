"""One writer per run folder: ``output_dir/.lock``, an OS file lock (``fcntl.flock``) held by the
training process (rank 0 under torchrun) for the whole run.

The file records who holds it (host, pid, start time, command line), so that a second run into
the same folder is refused naming the holder. The lock belongs to the open file, so the operating
system releases it when the process dies however it dies (``kill -9`` included); a lock file left
behind is then taken over with a warning. The OS lock alone decides whether a run holds the
folder (never a pid test: pids are per namespace and per host): forked children (DataLoader
workers) close their copy of the descriptor at fork, so a worker that outlives a killed run does
not keep the folder locked. On a file system without ``flock`` (Lustre ``noflock``, some FUSE,
CIFS or lockd-less NFS mounts) the run goes on with a warning that the guard is off. The holder
removes the file when the run ends.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from ibc_geo.utils.errors import UserError

logger = logging.getLogger("ibc_geo")


class RunLockedError(UserError, RuntimeError):
    """Another live process is writing the run folder."""


#: Descriptors of the locks this process holds; a forked child closes its copies (closing a copy
#: never unlocks: the lock lives until the holder's own descriptor closes).
_HELD: set = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _flock(fd: int, path: Path) -> bool:
    """Try the exclusive lock: True when taken, False when another open file holds it; a file
    system without ``flock`` is warned about once and counts as taken (no guard there)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
            logger.warning("%s: this file system does not support file locks (%s): the one-writer guard of "
                           "the run folder is off", path, e.strerror)
            return True
        raise


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        record = json.loads(data.decode("utf-8")) if data.strip() else {}
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "a process that recorded nothing"
    when = record.get("started")
    started = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}" if when else ""
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}{started}"


class RunLock:
    """The lock of the run folder ``root`` (``root/.lock``).

    :meth:`check` looks without creating anything (a start that is refused later leaves the folder
    as it was); :meth:`acquire` creates the folder and the file and takes the lock; :meth:`release`
    removes the file and lets go. Also a context manager (acquire / release).
    """

    def __init__(self, root: "str | os.PathLike") -> None:
        self.root = Path(root)
        self.path = self.root / ".lock"
        self._fd: Optional[int] = None

    # ------------------------------------------------------------------------------------------
    def _refuse(self, record: dict) -> RunLockedError:
        return RunLockedError(
            f"output_dir {self.root} is being written by another training run ({_describe(record)}; lock file "
            f"{self.path}): wait for it to end, or choose another output_dir. A second writer would mix the two "
            f"runs' config.yaml, checkpoints and metrics.json")

    def check(self) -> None:
        """Refuse (:class:`RunLockedError`, naming the holder) when a live process holds the lock;
        creates nothing."""
        fd = None
        for flags in (os.O_RDWR, os.O_RDONLY):  # NFS's flock needs a descriptor open for writing
            try:
                fd = os.open(self.path, flags | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                return
            except OSError:
                continue
        if fd is None:
            return  # unreadable: acquire() will say why
        try:
            if not _flock(fd, self.path):
                raise self._refuse(_read(fd))
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            return  # acquire() decides, and says why
        finally:
            os.close(fd)

    def acquire(self) -> "RunLock":
        """Create ``root`` if needed and take the lock, recording this host and pid; a lock left by a
        process that is gone is taken over with a warning."""
        from ibc_geo.utils.io import output_error

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(self.root, e, "cannot create output_dir") from None
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise output_error(self.path, e) from None
            try:
                taken = _flock(fd, self.path)
            except OSError as e:
                os.close(fd)
                raise output_error(self.path, e, "cannot lock") from None
            if not taken:
                record = _read(fd)
                os.close(fd)
                raise self._refuse(record)
            # the file may have been removed (released, or taken over) between open and flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read(fd)
            if old and old.get("pid") != os.getpid():
                logger.warning("output_dir %s: a lock left by %s (no longer running) is taken over", self.root,
                               _describe(old))
            record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                      "argv": list(sys.argv)}
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise output_error(self.path, e) from None
            self._fd = fd
            _HELD.add(fd)
            return self
        raise RunLockedError(f"cannot take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go."""
        if self._fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                logger.warning("could not remove the lock file %s: %s", self.path, e)
        finally:
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

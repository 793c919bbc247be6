"""One writer per work folder: an exclusive lock held while a run writes its ledger.

``autolabel run``, ``autolabel watch`` (for its whole life) and the Python API's run take
:func:`lock_work_folder` on ``<work>/autolabel.lock`` before they open the ledger. A second
process on the same folder gets :class:`~autolabel.errors.WorkFolderBusy` (exit code 2)
naming the holder, or waits for it with ``wait_s`` (``--wait-lock [SECONDS]``).

Contract:

* the lock is an OS file lock (``flock``) on an open file: it is released when the holder
  closes it, exits or is killed -- a crash never leaves a stale lock behind, and the file
  itself is never deleted (deleting lock files races);
* two holders in one process conflict as well: two runs in threads on one folder are the
  same mistake as two processes;
* the file holds the holder's pid, host and start time, for the message only;
* across machines the lock holds on a shared folder whose file system supports locks
  (local disks, NFSv4, SMB). Where it does not, or where each machine has its own work
  folder, RedBrick itself keeps one writer per task: see :mod:`autolabel.pipeline.submit`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from autolabel.errors import ConfigError, WorkFolderBusy

#: The lock file inside a work folder.
LOCK_FILENAME = "autolabel.lock"
_POLL_S = 0.2


class WorkLock:
    """A held lock on a work folder; :meth:`release` (or leaving the ``with``) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Free the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> WorkLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_work_folder(work_dir: str | os.PathLike[str], *, wait_s: float | None = 0.0) -> WorkLock:
    """Take the lock of ``work_dir`` (created if missing).

    ``wait_s`` is how long to wait for another holder: ``0`` (the default) not at all,
    ``None`` for as long as it takes. Raises :class:`WorkFolderBusy` when the folder stays
    locked, :class:`~autolabel.errors.ConfigError` when the lock file cannot be opened.
    """
    folder = Path(work_dir)
    path = folder / LOCK_FILENAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc}") from exc
    deadline = None if wait_s is None else time.monotonic() + max(0.0, wait_s)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                holder = _holder(path)
                os.close(fd)
                waited = f" after waiting {wait_s:g} s" if wait_s else ""
                raise WorkFolderBusy(
                    f"the work folder {folder} is in use by another autolabel run{holder}"
                    f"{waited}; wait for it to finish, pass --wait-lock to wait for it, or "
                    "give this run its own --work folder"
                ) from None
            time.sleep(_POLL_S)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {path}: {exc}") from exc
    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(note) + "\n").encode("utf-8"), 0)
    return WorkLock(path, fd)


def _holder(path: Path) -> str:
    """`` (pid N on HOST since T)`` from the lock file, or empty when unreadable."""
    try:
        note = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(float(note["since"])))
        return f" (pid {int(note['pid'])} on {note['host']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


__all__ = ["LOCK_FILENAME", "WorkLock", "lock_work_folder"]

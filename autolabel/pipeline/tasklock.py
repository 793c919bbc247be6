"""One writer per task on this machine: a lock held across a task's guarded write.

RedBrick's saving mutation has no compare-and-set, so two autolabel runs that re-read a
task before either write lands both write it (see :mod:`autolabel.pipeline.submit`). Runs on one
machine take :func:`task_write_lock` around "re-read, guard, send, settle if in doubt":
the second run gets the lock only once the first run's write has landed (or been
settled), so its re-read sees the first run's stamp and it skips the task.

Contract:

* one lock per task, keyed by the SHA-256 of (normalised API endpoint, org id, project
  id, task id), on a file in a per-user folder outside any work folder
  (:func:`lock_folder`): ``$XDG_RUNTIME_DIR/autolabel-locks``, else
  ``<temp dir>/autolabel-locks-<uid>``, created 0700; a folder that is a symlink or is
  owned by another user is refused (:class:`~autolabel.errors.ConfigError`);
* the lock is ``flock`` on a file opened for each acquisition: it belongs to that open
  file, so two threads of one process exclude each other as two processes do, and it
  dies with the process (a killed run never leaves it held). Lock files stay in place
  (empty; deleting lock files races);
* a thread holds at most one task lock (taking a second one raises ``RuntimeError``), and
  callers hold it only across the write, never across a download or an inference;
* the wait is bounded: :class:`~autolabel.errors.TaskWriteBusy` names the task when
  another holder keeps it longer than ``wait_s`` (the task fails, the run goes on);
* the lock covers one machine. Runs on other machines, including the nodes of a Ray
  cluster, each hold their own machine's lock only; between them RedBrick's re-read is
  the only guard (the window :mod:`autolabel.pipeline.submit` documents).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autolabel.errors import ConfigError, TaskWriteBusy

#: The folder name under ``$XDG_RUNTIME_DIR`` (or, with the uid, under the temp dir).
FOLDER_NAME = "autolabel-locks"
_POLL_S = 0.05
_held = threading.local()


def lock_folder() -> Path:
    """The per-user lock folder, created 0700 if missing.

    Raises :class:`~autolabel.errors.ConfigError` when it is a symlink, not a folder, or
    owned by another user.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and _owned_folder(Path(runtime)):
        folder = Path(runtime) / FOLDER_NAME
    else:
        folder = Path(tempfile.gettempdir()) / f"{FOLDER_NAME}-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the task lock folder {folder}: {exc}") from exc
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"the task lock folder {folder} is not a plain folder (a symlink?); remove it"
        )
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"the task lock folder {folder} belongs to another user (uid {info.st_uid}); "
            "remove it or set XDG_RUNTIME_DIR to a folder of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def _owned_folder(path: Path) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def task_lock_key(endpoint: str, org_id: str, project_id: str, task_id: str) -> str:
    """The hex SHA-256 naming one task's lock; ``endpoint`` is the normalised API URL."""
    text = "\n".join((endpoint.strip().lower().rstrip("/"), org_id, project_id, task_id))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextmanager
def task_write_lock(key: str, task_id: str, *, wait_s: float) -> Iterator[None]:
    """Hold the machine-wide write lock named ``key`` (:func:`task_lock_key`) of task
    ``task_id`` for the ``with`` body.

    Waits up to ``wait_s`` seconds for another holder, then raises
    :class:`~autolabel.errors.TaskWriteBusy`; raises ``RuntimeError`` when this thread
    already holds a task lock, :class:`~autolabel.errors.ConfigError` when the lock file
    cannot be opened.
    """
    if getattr(_held, "key", None) is not None:
        raise RuntimeError(f"this thread already holds a task write lock; not taking {task_id}'s")
    path = lock_folder() / f"{key}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the task lock file {path}: {exc}") from exc
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TaskWriteBusy(
                        f"another autolabel run on this machine is writing task {task_id} "
                        f"(still after waiting {wait_s:g} s); run again later to write it"
                    ) from None
                time.sleep(_POLL_S)
            except OSError as exc:
                raise ConfigError(f"cannot lock {path}: {exc}") from exc
        _held.key = key
        try:
            yield
        finally:
            _held.key = None
    finally:
        os.close(fd)  # closing the descriptor releases the flock


__all__ = ["FOLDER_NAME", "lock_folder", "task_lock_key", "task_write_lock"]

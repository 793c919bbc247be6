"""Local files: where a task's files go (every path derives from its task id) and how
they are written (atomically, with leftovers a later run removes).

Task folders
------------
Local paths of a task: every one derives from the task id, never from its name.

Task names are free text chosen by whoever uploaded the study: ``CT 1``, ``CT_1`` and
``CT/1`` are three tasks, and a name may be absolute (``/x/y``), climb (``../../x``) or be
4,000 characters long. So no local path is ever built from a name: :func:`task_dirname`
turns a task id into one safe folder name, and :func:`task_folder` places it under a root.

Two different ids never give the same folder name, and the name never leaves the root:

* an id made of lower-case letters, digits, ``-`` and ``_`` (a RedBrick UUID) is used as
  it is (at most 64 characters);
* any other id -- upper case (two ids differing only in case would meet on a
  case-insensitive disk), separators, dots, too long -- becomes a short sanitised prefix,
  a ``.`` and 20 hex digits of the id's SHA-256. Plain ids never contain ``.``, so the two
  forms cannot meet either.

Atomic writes
-------------
Atomic file writes whose leftovers a later run recognises and removes.

:func:`atomic_file` writes to a temporary file beside the target and renames it over the
target only when the write completed, so a reader never sees half a file. A process killed
mid-write (``kill -9``, power loss) cannot clean up after itself, so the temporary file's
name says whose it is: ``.<target name>~<host>~<pid>~<random>.autolabel-tmp``.
:func:`remove_stale_temps` (called when a run starts, and by ``predict`` for its target)
deletes those whose process on this host is gone, and any older than a day (from another
host sharing the folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: The suffix of every temporary file autolabel writes.
TEMP_SUFFIX = ".autolabel-tmp"
#: Temporary files older than this are stale whoever made them.
STALE_AFTER_S = 24 * 3600.0


def _host() -> str:
    return socket.gethostname().replace("~", "-").replace(os.sep, "-") or "host"


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target`` that names this host and process."""
    token = uuid.uuid4().hex[:8]
    return target.with_name(f".{target.name}~{_host()}~{os.getpid()}~{token}{TEMP_SUFFIX}")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: renamed over ``path`` when the block ends
    without error, removed otherwise. Parent folders are created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(target)
    try:
        with open(temp, "xb") as stream:
            yield stream
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """Whether ``path`` (an autolabel temporary file) was left by a process that is gone."""
    try:
        _, host, pid, _ = path.name.removesuffix(TEMP_SUFFIX).rsplit("~", 3)
        age = (now or time.time()) - path.stat().st_mtime
    except (ValueError, OSError):
        return False
    if age > STALE_AFTER_S:
        return True
    return host == _host() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def remove_stale_temps(folder: Path, *, target: str = "", recursive: bool = True) -> int:
    """Delete the stale temporary files under ``folder`` (only ``target``'s when given);
    return how many went. Live writers' files are left alone."""
    if not folder.is_dir():
        return 0
    pattern = f".{target}~*{TEMP_SUFFIX}" if target else f"*{TEMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = 0
    for path in found:
        if is_stale(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


_PLAIN_ID = re.compile(r"[0-9a-z_-]{1,64}")
_UNSAFE = re.compile(r"[^0-9a-z_-]+")


def task_dirname(task_id: str) -> str:
    """A file-name-safe folder name for ``task_id``, unique per id (see the module docstring)."""
    if _PLAIN_ID.fullmatch(task_id):
        return task_id
    prefix = _UNSAFE.sub("-", task_id.lower()).strip("-_")[:32] or "task"
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"{prefix}.{digest}"


def task_folder(root: Path, task_id: str) -> Path:
    """``root/<task_dirname(task_id)>``: the one folder of ``task_id`` under ``root``."""
    return Path(root) / task_dirname(task_id)


def safe_component(text: str, *, limit: int = 80, fallback: str = "item") -> str:
    """``text`` (a series or file name) as one path component: letters, digits and
    ``._-`` kept, other runs replaced by ``_``, leading dots stripped, at most ``limit``
    characters. Only for names placed under a task's own folder next to a position
    prefix, which alone keeps them apart."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit].rstrip("._")
    return cleaned or fallback

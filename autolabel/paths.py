"""Local paths of a task: every one derives from the task id, never from its name.

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
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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


__all__ = ["safe_component", "task_dirname", "task_folder"]

"""The emulator's state on disk: one SQLite file (WAL) under the data directory.

Tables hold what a RedBrick organisation holds for the calls the SDK makes: orgs, users
(API keys are users ``API:<uuid>``; only the SHA-256 of a key is stored), projects (stages
and taxonomy as JSON), tasks (stage, state, assignee), labels (every saved version, the
latest wins) and an events table with one row per write attempt. Blob bytes live in
``storage/`` (see :mod:`autolabel.emulator.storage`); this module only keeps their index.

All access goes through one connection guarded by a re-entrant lock, so the threads of the
HTTP server and the test that drives it can share a :class:`Store`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autolabel.emulator.entities import (
    EventRecord,
    LabelRecord,
    ProjectRecord,
    TaskRecord,
    UserRecord,
    key_digest,
    labels_from_row,
    opt_bool,
    project_from_row,
    task_from_row,
    user_from_row,
    utc_now,
)

DB_NAME = "emulator.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs(org_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users(
  user_id TEXT PRIMARY KEY, org_id TEXT NOT NULL, email TEXT NOT NULL, given_name TEXT NOT NULL,
  family_name TEXT NOT NULL, role TEXT NOT NULL, key_sha256 TEXT UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects(
  project_id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, td_type TEXT NOT NULL,
  taxonomy TEXT NOT NULL, stages TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT UNIQUE NOT NULL, project_id TEXT NOT NULL,
  dp_id TEXT NOT NULL, name TEXT NOT NULL, items TEXT NOT NULL, series_info TEXT NOT NULL,
  storage_id TEXT NOT NULL, meta_data TEXT, priority REAL, created_by TEXT NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, stage_name TEXT NOT NULL, state TEXT NOT NULL,
  assigned_to TEXT, assigned_at TEXT, progress_saved_at TEXT, completed_at TEXT, review_state TEXT,
  UNIQUE(project_id, name));
CREATE TABLE IF NOT EXISTS labels(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, td_id TEXT UNIQUE NOT NULL, task_id TEXT NOT NULL,
  stage_name TEXT NOT NULL, labels_data TEXT NOT NULL, labels_data_path TEXT,
  labels_map TEXT NOT NULL, storage_id TEXT NOT NULL, created_by TEXT NOT NULL,
  created_at TEXT NOT NULL, finished INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS labels_by_task ON labels(task_id, seq);
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT, operation TEXT NOT NULL, stage_name TEXT,
  user_id TEXT, finished INTEGER, review_val INTEGER, accepted INTEGER NOT NULL, message TEXT,
  at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sub_tasks(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, stage_name TEXT NOT NULL,
  user_id TEXT NOT NULL, state TEXT NOT NULL, assigned_at TEXT NOT NULL,
  UNIQUE(task_id, stage_name, user_id));
CREATE TABLE IF NOT EXISTS blobs(
  key TEXT PRIMARY KEY, content_type TEXT, content_encoding TEXT, size INTEGER NOT NULL,
  sha256 TEXT NOT NULL, created_at TEXT NOT NULL);
"""


class Store:
    """Thread-safe access to ``DIR/emulator.sqlite3``; created on first use."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one SQLite transaction (nested calls join the outer one)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # -- meta -------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A value of the key/value ``meta`` table."""
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a ``meta`` value."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- orgs and users ---------------------------------------------------------------------

    def add_org(self, org_id: str, name: str) -> None:
        """Create an organisation."""
        with self.transaction() as db:
            db.execute("INSERT INTO orgs VALUES (?, ?, ?)", (org_id, name, utc_now()))

    def org_ids(self) -> list[str]:
        """Every org id, oldest first."""
        return [str(r["org_id"]) for r in self._rows("SELECT org_id FROM orgs ORDER BY rowid")]

    def add_user(self, user: UserRecord, *, api_key: str | None = None) -> None:
        """Add a member; ``api_key`` (stored as its digest) makes it callable over HTTP."""
        digest = key_digest(api_key) if api_key else None
        with self.transaction() as db:
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.org_id,
                    user.email,
                    user.given_name,
                    user.family_name,
                    user.role,
                    digest,
                    utc_now(),
                ),
            )

    def user_by_key(self, api_key: str) -> UserRecord | None:
        """The user an API key belongs to, or None for an unknown key."""
        rows = self._rows("SELECT * FROM users WHERE key_sha256 = ?", (key_digest(api_key),))
        return user_from_row(rows[0]) if rows else None

    def user(self, ident: str) -> UserRecord | None:
        """A user by user id or (case-insensitive) email."""
        rows = self._rows(
            "SELECT * FROM users WHERE user_id = ? OR (email != '' AND lower(email) = lower(?))",
            (ident, ident),
        )
        return user_from_row(rows[0]) if rows else None

    def users(self, org_id: str) -> list[UserRecord]:
        """The members of an org, oldest first."""
        rows = self._rows("SELECT * FROM users WHERE org_id = ? ORDER BY rowid", (org_id,))
        return [user_from_row(r) for r in rows]

    # -- projects ---------------------------------------------------------------------------

    def add_project(self, project: ProjectRecord) -> None:
        """Create a project."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO projects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project.project_id,
                    project.org_id,
                    project.name,
                    project.td_type,
                    json.dumps(project.taxonomy),
                    json.dumps(project.stages),
                    project.created_at,
                    project.updated_at,
                ),
            )

    def set_stages(self, project_id: str, stages: list[dict[str, Any]]) -> None:
        """Replace a project's stages (``stageConfig``/``routing`` as the SDK shows them)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE projects SET stages = ?, updated_at = ? WHERE project_id = ?",
                (json.dumps(stages), utc_now(), project_id),
            )

    def project(self, project_id: str) -> ProjectRecord | None:
        """A project by id."""
        rows = self._rows("SELECT * FROM projects WHERE project_id = ?", (project_id,))
        return project_from_row(rows[0]) if rows else None

    def projects(self, org_id: str | None = None) -> list[ProjectRecord]:
        """The projects of an org (all orgs when None), oldest first."""
        if org_id is None:
            rows = self._rows("SELECT * FROM projects ORDER BY rowid")
        else:
            rows = self._rows("SELECT * FROM projects WHERE org_id = ? ORDER BY rowid", (org_id,))
        return [project_from_row(r) for r in rows]

    # -- tasks ------------------------------------------------------------------------------

    def add_task(self, task: TaskRecord) -> None:
        """Insert a task; raises ``sqlite3.IntegrityError`` on a duplicate name in the project."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO tasks(task_id, project_id, dp_id, name, items, series_info, storage_id,"
                " meta_data, priority, created_by, created_at, updated_at, stage_name, state,"
                " assigned_to, assigned_at, progress_saved_at, completed_at, review_state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.task_id,
                    task.project_id,
                    task.dp_id,
                    task.name,
                    json.dumps(task.items),
                    json.dumps(task.series_info),
                    task.storage_id,
                    task.meta_data,
                    task.priority,
                    task.created_by,
                    task.created_at,
                    task.updated_at,
                    task.stage_name,
                    task.state,
                    task.assigned_to,
                    task.assigned_at,
                    task.progress_saved_at,
                    task.completed_at,
                    task.review_state,
                ),
            )

    def task(self, task_id: str) -> TaskRecord | None:
        """A task by id."""
        rows = self._rows("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return task_from_row(rows[0]) if rows else None

    def task_by_name(self, project_id: str, name: str) -> TaskRecord | None:
        """A task by its (unique) name in a project."""
        rows = self._rows(
            "SELECT * FROM tasks WHERE project_id = ? AND name = ?", (project_id, name)
        )
        return task_from_row(rows[0]) if rows else None

    def tasks(self, project_id: str | None = None) -> list[TaskRecord]:
        """The tasks of a project (all projects when None) in creation order."""
        if project_id is None:
            rows = self._rows("SELECT * FROM tasks ORDER BY seq")
        else:
            rows = self._rows(
                "SELECT * FROM tasks WHERE project_id = ? ORDER BY seq", (project_id,)
            )
        return [task_from_row(r) for r in rows]

    def update_task(self, task_id: str, **changes: Any) -> None:
        """Set task columns (``updated_at`` is set to now unless given)."""
        changes.setdefault("updated_at", utc_now())
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self.transaction() as db:
            db.execute(
                f"UPDATE tasks SET {columns} WHERE task_id = ?", (*changes.values(), task_id)
            )

    # -- labels -----------------------------------------------------------------------------

    def add_labels(self, labels: LabelRecord) -> None:
        """Save a new version of a task's labels."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO labels(td_id, task_id, stage_name, labels_data, labels_data_path,"
                " labels_map, storage_id, created_by, created_at, finished)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    labels.td_id,
                    labels.task_id,
                    labels.stage_name,
                    labels.labels_data,
                    labels.labels_data_path,
                    json.dumps(labels.labels_map),
                    labels.storage_id,
                    labels.created_by,
                    labels.created_at,
                    int(labels.finished),
                ),
            )

    def label_history(self, task_id: str) -> list[LabelRecord]:
        """Every saved version of a task's labels, oldest first."""
        rows = self._rows("SELECT * FROM labels WHERE task_id = ? ORDER BY seq", (task_id,))
        return [labels_from_row(r) for r in rows]

    def latest_labels(self, task_id: str) -> LabelRecord | None:
        """The newest labels of a task, or None when it has none."""
        rows = self._rows(
            "SELECT * FROM labels WHERE task_id = ? ORDER BY seq DESC LIMIT 1", (task_id,)
        )
        return labels_from_row(rows[0]) if rows else None

    def latest_labels_by(self, task_id: str, user_id: str) -> LabelRecord | None:
        """The newest labels ``user_id`` saved on a task, or None."""
        rows = self._rows(
            "SELECT * FROM labels WHERE task_id = ? AND created_by = ? ORDER BY seq DESC LIMIT 1",
            (task_id, user_id),
        )
        return labels_from_row(rows[0]) if rows else None

    # -- consensus sub-tasks ----------------------------------------------------------------

    def sub_tasks(self, task_id: str, stage_name: str) -> list[dict[str, Any]]:
        """The other labelers' sub-tasks of a consensus task in a stage, in assignment order:
        ``{"user_id", "state", "assigned_at"}`` (the first labeler is the task's assignee)."""
        rows = self._rows(
            "SELECT user_id, state, assigned_at FROM sub_tasks WHERE task_id = ? AND"
            " stage_name = ? ORDER BY seq",
            (task_id, stage_name),
        )
        return [dict(r) for r in rows]

    def set_sub_tasks(self, task_id: str, stage_name: str, user_ids: list[str]) -> None:
        """Replace the other labelers of a task in a stage (each starts ``ASSIGNED``)."""
        now = utc_now()
        with self.transaction() as db:
            db.execute("DELETE FROM sub_tasks WHERE task_id = ?", (task_id,))
            db.executemany(
                "INSERT INTO sub_tasks(task_id, stage_name, user_id, state, assigned_at)"
                " VALUES (?, ?, ?, 'ASSIGNED', ?)",
                [(task_id, stage_name, user, now) for user in user_ids],
            )

    def set_sub_task_state(self, task_id: str, stage_name: str, user_id: str, state: str) -> None:
        """Set the state of one labeler's sub-task."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sub_tasks SET state = ? WHERE task_id = ? AND stage_name = ? AND"
                " user_id = ?",
                (state, task_id, stage_name, user_id),
            )

    # -- events -----------------------------------------------------------------------------

    def add_event(
        self,
        operation: str,
        *,
        task_id: str | None,
        stage_name: str | None,
        user_id: str | None,
        accepted: bool,
        finished: bool | None = None,
        review_val: bool | None = None,
        message: str | None = None,
    ) -> None:
        """Record one write attempt."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events(task_id, operation, stage_name, user_id, finished, review_val,"
                " accepted, message, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    operation,
                    stage_name,
                    user_id,
                    None if finished is None else int(finished),
                    None if review_val is None else int(review_val),
                    int(accepted),
                    message,
                    utc_now(),
                ),
            )

    def events(self, task_id: str | None = None) -> list[EventRecord]:
        """Write attempts in order, for one task or all."""
        if task_id is None:
            rows = self._rows("SELECT * FROM events ORDER BY seq")
        else:
            rows = self._rows("SELECT * FROM events WHERE task_id = ? ORDER BY seq", (task_id,))
        return [
            EventRecord(
                seq=int(r["seq"]),
                task_id=r["task_id"],
                operation=str(r["operation"]),
                stage_name=r["stage_name"],
                user_id=r["user_id"],
                finished=opt_bool(r["finished"]),
                review_val=opt_bool(r["review_val"]),
                accepted=bool(r["accepted"]),
                message=r["message"],
                at=str(r["at"]),
            )
            for r in rows
        ]

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(
        self, key: str, *, size: int, sha256: str, content_type: str | None, encoding: str | None
    ) -> None:
        """Record (or replace) the index entry of a stored object."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                (key, content_type, encoding, size, sha256, utc_now()),
            )

    def blob(self, key: str) -> dict[str, Any] | None:
        """The index entry of a stored object: content_type, content_encoding, size, sha256."""
        rows = self._rows("SELECT * FROM blobs WHERE key = ?", (key,))
        return dict(rows[0]) if rows else None

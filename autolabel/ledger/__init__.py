"""The ledger: what autolabel did to which task, with which model, in an SQLite file.

The ledger lives in the work folder (``<work>/ledger.sqlite``). It is a record of our own
actions, not the truth: RedBrick is. The pipeline uses it to skip work that the same model
version already did, to resume after a crash, and ``autolabel status`` to report.

Contents
--------
* ``runs``: one row per invocation (run id, start and finish time, mode ``draft`` / ``final``
  / ``dry-run``, the command line and options **without secrets**, the model).
* ``events``: append-only (triggers refuse ``UPDATE`` and ``DELETE``). One row per state
  change of a task under a model: run id, task id and name, :class:`ModelKey`, mode, state,
  time, input checksum, a ``detail`` JSON object and, for failures, the error type and
  message. By convention ``detail["seconds"]`` is the duration of the step that led to the
  state (fetch, inference, conversion, write); :meth:`Ledger.summary` totals them.

States and exactly-once writes
------------------------------
``queued → fetched → predicted → converted → writing → draft_saved | submitted``, plus
``skipped`` (with ``detail["reason"]``), ``failed`` (with the error) and ``dry_run`` (the
payload was kept locally instead of written); ``autolabel undo`` (a run of mode ``undo``)
adds ``undoing → undone`` after a write (:mod:`autolabel.pipeline.undo`). The write protocol:

1. record ``writing`` -- the intent -- and let it commit *before* sending the write request;
2. send the request;
3. record ``draft_saved`` or ``submitted``.

The ledger refuses a written state unless the latest event of that task and model is
``writing``. At the start of a run, *before* processing any task again, the pipeline calls
:meth:`Ledger.in_doubt_writes`: the tasks a previous run left between steps 1 and 3. It
re-reads each from RedBrick, patiently (:func:`autolabel.pipeline.submit.settle`: until it shows the
write or the settle window after the latest ``writing`` event has passed; a write whose
reply was lost is recorded as ``writing`` again, with ``detail["in_doubt"]``, before it is
settled); if the write landed it records ``draft_saved``/``submitted``
(``detail={"resolved": ...}``), otherwise it processes the task like any other. Every other
task is either done (:meth:`Ledger.is_done`: skip it) or was never written (redo it), so a
``kill -9`` at any moment followed by a re-run writes each task exactly once
(``tests/test_ledger.py`` kills a worker at each of these points and checks it).

Durability and concurrency
--------------------------
Every :meth:`Run.record` is its own committed transaction. The database is in WAL mode.
With ``power_safe=True`` (the default, ``synchronous=FULL``) each commit is fsynced, so it
survives a power cut as well; with ``power_safe=False`` (``synchronous=NORMAL``) a commit
survives the process being killed (``kill -9``, a crash) but the last commits may be lost if
the machine loses power. Progress events (:data:`PROGRESS`) get no fsync of their own: a
killed process keeps them, and the next fsynced commit carries them. One :class:`Ledger` may
be shared by threads (a lock serialises its one connection); several processes may open the
same file (writes take SQLite's write lock, waiting up to ``timeout`` seconds for it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autolabel.errors import LedgerError
from autolabel.ledger.queries import MODEL_MATCH, LedgerQueries
from autolabel.ledger.schema import upgrade
from autolabel.records import (
    DONE_STATES,
    LEDGER_MODES,
    MODES,
    UNDO_MODE,
    LedgerSummary,
    Mode,
    ModelKey,
    RunInfo,
    StepTiming,
    TaskEvent,
    TaskState,
)
from autolabel.settings.secrets import redact, redact_argv, redact_value

#: File name of the ledger inside the work folder.
LEDGER_FILENAME = "ledger.sqlite"
#: Version of the schema below, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 2  # 2: undo's states and mode (a version-1 file is upgraded on open)
#: Marks the file as an autolabel ledger (``PRAGMA application_id``; "AlLg").
APPLICATION_ID = 0x416C4C67


_WRITTEN = (TaskState.DRAFT_SAVED, TaskState.SUBMITTED)
_UNDO = (TaskState.UNDOING, TaskState.UNDONE)
_ANY_RUN = (TaskState.SKIPPED, TaskState.FAILED)
#: Progress events, committed with no fsync of their own: no write depends on them.
PROGRESS = frozenset({TaskState.FETCHED, TaskState.PREDICTED, TaskState.CONVERTED})

_SCHEMA = f"""
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL DEFAULT 'running',
    mode TEXT NOT NULL CHECK (mode IN ({", ".join(repr(m) for m in LEDGER_MODES)})),
    command TEXT NOT NULL DEFAULT '[]',
    options TEXT NOT NULL DEFAULT '{{}}',
    model_name TEXT, model_version TEXT, weights_hash TEXT
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    task_id TEXT NOT NULL,
    task_name TEXT NOT NULL DEFAULT '',
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s.value) for s in TaskState)})),
    at REAL NOT NULL,
    input_checksum TEXT,
    detail TEXT NOT NULL DEFAULT '{{}}',
    error_type TEXT,
    error_message TEXT
);
CREATE INDEX events_by_task ON events (task_id, model_name, model_version, weights_hash, seq);
CREATE INDEX events_by_run ON events (run_id, seq);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
"""


class Run:
    """A handle on one run: records task events with the run's id, mode and model."""

    def __init__(self, ledger: Ledger, run_id: str, mode: str, model: ModelKey | None) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.mode = mode
        self.model = model

    def record(
        self,
        task_id: str,
        state: TaskState | str,
        *,
        task_name: str = "",
        model: ModelKey | None = None,
        input_checksum: str | None = None,
        detail: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> TaskEvent:
        """Append one event and commit it before returning (see :meth:`Ledger.record`)."""
        return self.ledger.record(
            self.run_id,
            task_id,
            state,
            task_name=task_name,
            model=model or self.model,
            input_checksum=input_checksum,
            detail=detail,
            error=error,
        )

    def finish(self, status: str = "finished") -> None:
        """Stamp the run's finish time and status (``finished``, ``interrupted``, ``failed``)."""
        self.ledger.finish_run(self.run_id, status=status)


class Ledger(LedgerQueries):
    """The ledger file at ``path`` (see the module docstring for its contract).

    ``create=False`` refuses to make a new file (for read-only users such as
    ``autolabel status``). Any file that is not a readable autolabel ledger, and any SQLite
    failure later, raises :class:`~autolabel.errors.LedgerError` naming the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        timeout: float = 30.0,
        power_safe: bool = True,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._sync = "FULL" if power_safe else "NORMAL"
        if not create and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path}: nothing has run with this work folder")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from exc
        try:
            self._setup(timeout, power_safe)
        except LedgerError:
            self._db.close()
            raise

    # -- set-up -------------------------------------------------------------------------

    def _setup(self, timeout: float, power_safe: bool) -> None:
        with self._translate("open"):
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            # Reading the header fails here for a file that is not SQLite.
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            app_id = int(self._db.execute("PRAGMA application_id").fetchone()[0])
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"the ledger {self.path} cannot use WAL mode (got {mode})")
            self._db.execute(f"PRAGMA synchronous = {'FULL' if power_safe else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys = ON")
            if version == 0 and app_id == 0:
                self._create_schema()
            elif app_id != APPLICATION_ID:
                raise LedgerError(
                    f"{self.path} is an SQLite file but not an autolabel ledger; "
                    "point --work at another folder or move the file aside"
                )
            elif version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger {self.path} has schema version {version}, newer than this "
                    f"autolabel understands ({SCHEMA_VERSION}); upgrade autolabel"
                )
            elif version < SCHEMA_VERSION:
                with self._lock:
                    upgrade(self._db, _SCHEMA, SCHEMA_VERSION)

    def _create_schema(self) -> None:
        with self._transaction() as db:
            # Another process may have created it while we waited for the write lock.
            if int(db.execute("PRAGMA application_id").fetchone()[0]) == APPLICATION_ID:
                return
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise LedgerError(
                    f"{self.path} is an SQLite file but not an autolabel ledger; "
                    "point --work at another folder or move the file aside"
                )
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot {action} the ledger {self.path}: {exc}. If the file is damaged, move "
                "it aside and run again (RedBrick stays the truth; finished tasks are "
                "recognised there)"
            ) from exc

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front. Not
        ``durable``: committed with ``synchronous=NORMAL`` (no fsync of its own)."""
        with self._lock, self._translate("write"):
            self._db.execute(f"PRAGMA synchronous = {self._sync if durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._translate("read"):
            return list(self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        """Close the connection; the ledger must not be used afterwards."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------

    def start_run(
        self,
        *,
        mode: str,
        command: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
        model: ModelKey | None = None,
    ) -> Run:
        """Record the start of a run and return its handle.

        ``command`` (the argv) and ``options`` are stored without secrets: the value of
        ``--api-key`` (any spelling), of any option whose name contains ``key``, ``token``,
        ``secret`` or ``password``, and every secret registered with
        :func:`autolabel.settings.secrets.keep_secret` wherever it appears, are replaced by ``***``.
        ``mode`` is one of :data:`MODES`, or ``undo`` for ``autolabel undo``.
        """
        if mode not in LEDGER_MODES:
            raise ValueError(f"mode must be one of {LEDGER_MODES}, got {mode!r}")
        mode = str(mode)
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        params = model._params() if model else (None, None, None)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, started_at, mode, command, options, model_name, "
                "model_version, weights_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), mode, json.dumps(redact_argv(command)),
                 _to_json(_redact_options(options or {})), *params),
            )  # fmt: skip
        return Run(self, run_id, mode, model)

    def finish_run(self, run_id: str, *, status: str = "finished") -> None:
        """Stamp the finish time and status of a run."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?",
                (time.time(), status, run_id),
            )
            if cursor.rowcount != 1:
                raise ValueError(f"unknown run {run_id!r}")

    def record(
        self,
        run_id: str,
        task_id: str,
        state: TaskState | str,
        *,
        model: ModelKey | None,
        task_name: str = "",
        input_checksum: str | None = None,
        detail: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> TaskEvent:
        """Append one event for ``task_id`` under ``model`` in run ``run_id``; commit it.

        * The mode is the run's. ``writing`` is refused in a dry run, ``dry_run`` outside one.
        * ``draft_saved`` / ``submitted`` are refused (``ValueError``) unless the latest event
          of this task and model is ``writing``: the intent must be on disk before a write;
          likewise ``undone`` after ``undoing``, and both only in an ``undo`` run.
        * ``failed`` needs ``error``; its type name and message are stored.
        * Registered secrets (the key) are masked in the message, the name and ``detail``.
        * ``detail`` must be JSON-serialisable; ``detail["seconds"]`` is a step duration.
        """
        state = TaskState(state)
        if model is None:
            raise ValueError("record() needs a model (none given and the run has none)")
        if state is TaskState.FAILED and error is None:
            raise ValueError("a failed event needs the error")
        error_type = type(error).__name__ if error is not None else None
        # A model's or server's error text may quote the key (it read it from the
        # environment, a URL held it): masked like every other text the ledger keeps.
        message = redact(str(error)) if error is not None else None
        task_name = redact(task_name)
        detail = redact_value(dict(detail or {}))
        with self._transaction(durable=state not in PROGRESS) as db:
            row = db.execute("SELECT mode FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise ValueError(f"unknown run {run_id!r}")
            mode = str(row[0])
            _check_transition(db, task_id, model, mode, state)
            now = time.time()
            cursor = db.execute(
                "INSERT INTO events (run_id, task_id, task_name, model_name, model_version, "
                "weights_hash, mode, state, at, input_checksum, detail, error_type, "
                "error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, task_id, task_name, *model._params(), mode, state.value, now,
                 input_checksum, _to_json(detail or {}), error_type, message),
            )  # fmt: skip
            seq = int(cursor.lastrowid or 0)
        return TaskEvent(
            seq, run_id, task_id, task_name, model, mode, state, now, input_checksum,
            dict(detail or {}), error_type, message,
        )  # fmt: skip

    # -- queries ------------------------------------------------------------------------


def ledger_path(work_dir: str | os.PathLike[str]) -> Path:
    """Where the ledger of a work folder lives."""
    return Path(work_dir) / LEDGER_FILENAME


def _redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    secret = ("key", "token", "secret", "password")
    return {
        name: "***" if any(word in name.lower() for word in secret) and value else value
        for name, value in redact_value(dict(options)).items()
    }


def _check_transition(
    db: sqlite3.Connection, task_id: str, model: ModelKey, mode: str, state: TaskState
) -> None:
    if state is TaskState.WRITING and mode == "dry-run":
        raise ValueError("a dry run never writes to RedBrick: 'writing' is refused")
    if state is TaskState.DRY_RUN and mode != "dry-run":
        raise ValueError(f"'dry_run' can only be recorded in a dry run, not in {mode!r}")
    if (state in _UNDO) != (mode == UNDO_MODE) and state not in _ANY_RUN:
        raise ValueError(f"'{state.value}' cannot be recorded in a run of mode {mode!r}")
    needs = {TaskState.UNDONE: TaskState.UNDOING}.get(state, TaskState.WRITING)
    if state in _WRITTEN or state is TaskState.UNDONE:
        row = db.execute(
            f"SELECT state FROM events WHERE task_id = ? AND {MODEL_MATCH} "
            "AND mode != 'dry-run' ORDER BY seq DESC LIMIT 1",
            (task_id, *model._params()),
        ).fetchone()
        if row is None or row[0] != needs.value:
            raise ValueError(
                f"task {task_id}: '{state.value}' needs a preceding '{needs.value}' event "
                "(record the intent before sending the write)"
            )


def _to_json(value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ledger detail must be plain JSON: {exc}") from exc


__all__ = [
    "DONE_STATES",
    "LEDGER_FILENAME",
    "MODES",
    "PROGRESS",
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerSummary",
    "Mode",
    "ModelKey",
    "Run",
    "RunInfo",
    "StepTiming",
    "TaskEvent",
    "TaskState",
    "ledger_path",
]

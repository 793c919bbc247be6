"""Upgrading a ledger file written by an older autolabel to the current schema.

Version 1 listed the task states and run modes of its time in ``CHECK`` constraints;
version 2 adds the states ``undoing`` / ``undone`` and the run mode ``undo``
(``autolabel undo``). SQLite cannot change a ``CHECK`` in place, so :func:`upgrade`
rebuilds both tables from the current schema and copies every row, in one transaction:
a failure leaves the file as it was. Events stay append-only throughout (the old tables
are dropped whole, which fires no ``DELETE`` trigger).
"""

from __future__ import annotations

import sqlite3

#: The v1 objects that the current schema creates again under the same names.
_V1_OBJECTS = (
    "DROP TRIGGER events_no_update",
    "DROP TRIGGER events_no_delete",
    "DROP INDEX events_by_task",
    "DROP INDEX events_by_run",
)


def upgrade(db: sqlite3.Connection, schema: str, version: int) -> None:
    """Rebuild a version-1 ledger's tables with ``schema`` (the current ``CREATE``
    statements, separated by ``;`` and a newline) and stamp ``version``.

    ``db`` is in autocommit mode; foreign keys are switched off for the copy (renaming
    ``runs`` would otherwise drag the events' reference along) and on again after.
    """
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) >= version:
                db.execute("ROLLBACK")  # another process upgraded it while we waited
                return
            for statement in _V1_OBJECTS:
                db.execute(statement)
            db.execute("ALTER TABLE events RENAME TO events_v1")
            db.execute("ALTER TABLE runs RENAME TO runs_v1")
            for statement in schema.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO runs SELECT * FROM runs_v1")
            db.execute("INSERT INTO events SELECT * FROM events_v1")
            db.execute("DROP TABLE events_v1")
            db.execute("DROP TABLE runs_v1")
            db.execute(f"PRAGMA user_version = {int(version)}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.execute("PRAGMA foreign_keys = ON")

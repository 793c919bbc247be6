"""The questions a ledger answers: :class:`LedgerQueries`, the read side of
:class:`~autolabel.ledger.Ledger` (what a task's latest state is, what is done, which writes
are in doubt, what each run did)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from autolabel.records import (
    DONE_STATES,
    MODES,
    LedgerSummary,
    ModelKey,
    RunInfo,
    StepTiming,
    TaskEvent,
    TaskState,
)

#: The columns of an event row, in :class:`~autolabel.records.TaskEvent` order.
EVENT_COLUMNS = (
    "seq, run_id, task_id, task_name, model_name, model_version, weights_hash, mode, state, "
    "at, input_checksum, detail, error_type, error_message"
)
#: Matches the rows of one model (its name, version and weights hash).
MODEL_MATCH = "model_name = ? AND model_version = ? AND weights_hash = ?"


class LedgerQueries:
    """What a :class:`~autolabel.ledger.Ledger` answers; its one connection does the reads."""

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def latest(self, task_id: str, model: ModelKey) -> TaskEvent | None:
        """The latest event of ``task_id`` under ``model`` in any mode, or ``None``."""
        rows = self._query(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE task_id = ? AND {MODEL_MATCH} "
            "ORDER BY seq DESC LIMIT 1",
            (task_id, *model._params()),
        )
        return _event(rows[0]) if rows else None

    def history(self, task_id: str, model: ModelKey | None = None) -> list[TaskEvent]:
        """Every event of ``task_id`` (under ``model`` when given), oldest first."""
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE task_id = ?"
        params: tuple[str, ...] = (task_id,)
        if model is not None:
            sql, params = sql + f" AND {MODEL_MATCH}", params + model._params()
        return [_event(row) for row in self._query(sql + " ORDER BY seq", params)]

    def is_done(self, task_id: str, model: ModelKey, mode: str) -> bool:
        """Whether this exact model (name, version, weights) already did ``mode`` for the task.

        Done means some event of the task under the model reached a state of
        :data:`DONE_STATES` for ``mode`` (a submitted task is also done for drafts). A later
        failure of a forced redo does not undo it: the earlier write is on RedBrick; an
        ``undone`` event after it does (``autolabel undo`` reverted the write).
        """
        return task_id in self.done_task_ids(model, mode, task_ids=(task_id,))

    def done_task_ids(
        self, model: ModelKey, mode: str, *, task_ids: Sequence[str] | None = None
    ) -> set[str]:
        """The task ids (among ``task_ids`` when given) for which :meth:`is_done` is true."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        states = sorted(s.value for s in DONE_STATES[mode])
        sql = (
            f"SELECT task_id FROM events WHERE {MODEL_MATCH} GROUP BY task_id HAVING "
            f"max(CASE WHEN state IN ({', '.join('?' * len(states))}) THEN seq END) > "
            "coalesce(max(CASE WHEN state = 'undone' THEN seq END), 0)"
        )
        found = {str(row[0]) for row in self._query(sql, (*model._params(), *states))}
        return found if task_ids is None else found & set(task_ids)

    def in_doubt_writes(self, model: ModelKey | None = None) -> list[TaskEvent]:
        """The ``writing`` events not followed by an outcome: writes that may or may not have
        landed. Dry-run events are ignored. The pipeline must re-read these tasks from
        RedBrick before deciding anything about them."""
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN (SELECT max(seq) FROM events "
            "WHERE mode != 'dry-run' GROUP BY task_id, model_name, model_version, weights_hash)"
            " AND state = 'writing'"
        )
        events = [_event(row) for row in self._query(sql + " ORDER BY seq")]
        return [e for e in events if model is None or e.model == model]

    def writes_of(
        self, run_ids: Sequence[str] = (), models: Sequence[tuple[str, str]] = ()
    ) -> list[TaskEvent]:
        """The write events (``writing``, ``draft_saved``, ``submitted``) of the runs
        ``run_ids`` and of the models ``(name, version)`` (any weights), oldest first:
        what ``autolabel undo`` may revert."""
        where = [f"run_id IN ({', '.join('?' * len(run_ids))})"] if run_ids else []
        where += ["(model_name = ? AND model_version = ?)"] * len(models)
        if not where:
            return []
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE mode != 'dry-run' AND state IN "
            f"('writing', 'draft_saved', 'submitted') AND ({' OR '.join(where)}) ORDER BY seq"
        )
        params = (*run_ids, *(part for model in models for part in model))
        return [_event(row) for row in self._query(sql, params)]

    def runs(self, limit: int | None = None) -> list[RunInfo]:
        """Recorded runs, newest first."""
        sql = "SELECT * FROM runs ORDER BY started_at DESC, rowid DESC"
        rows = self._query(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [_run(row) for row in rows]

    def latest_events(self, run_id: str | None = None) -> list[TaskEvent]:
        """The latest event of each (task, model) pair, in one run or all, oldest first."""
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        return [
            _event(row)
            for row in self._query(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN (SELECT max(seq) FROM events "
                f"{where} GROUP BY task_id, model_name, model_version, weights_hash) ORDER BY seq",
                params,
            )
        ]

    def summary(self, run_id: str | None = None) -> LedgerSummary:
        """Counts of latest states, failures and step timings, for one run or all of them."""
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        latest = self.latest_events(run_id)
        counts: dict[str, int] = {}
        for event in latest:
            counts[event.state.value] = counts.get(event.state.value, 0) + 1
        timings: dict[str, StepTiming] = {}
        timing_sql = (
            "SELECT state, count(*), total(s), max(s) FROM (SELECT state, "
            f"json_extract(detail, '$.seconds') AS s FROM events {where}) "
            "WHERE s IS NOT NULL GROUP BY state"
        )
        for state, count, total, longest in self._query(timing_sql, params):
            timings[str(state)] = StepTiming(int(count), float(total), float(longest))
        runs = [r for r in self.runs() if run_id is None or r.run_id == run_id]
        failures = tuple(e for e in latest if e.state is TaskState.FAILED)
        return LedgerSummary(counts, failures, timings, tuple(runs))


def _event(row: tuple[Any, ...]) -> TaskEvent:
    (seq, run_id, task_id, task_name, name, version, weights, mode, state, at, checksum,
     detail, error_type, message) = row  # fmt: skip
    return TaskEvent(
        int(seq), str(run_id), str(task_id), str(task_name), ModelKey(name, version, weights),
        str(mode), TaskState(state), float(at), checksum, json.loads(detail), error_type, message,
    )  # fmt: skip


def _run(row: tuple[Any, ...]) -> RunInfo:
    run_id, started, finished, status, mode, command, options, name, version, weights = row
    model = ModelKey(name, version, weights or "") if name else None
    return RunInfo(
        str(run_id), float(started), None if finished is None else float(finished), str(status),
        str(mode), tuple(json.loads(command)), json.loads(options), model,
    )  # fmt: skip

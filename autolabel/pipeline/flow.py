"""One task's way through a run: :class:`TaskFlow`, the only place a task's outcome is decided.

Both schedulers -- the local threads (:mod:`autolabel.pipeline.local`) and the Ray driver
(:mod:`autolabel.pipeline.ray`) -- tell a task's flow what happened, and it records each
step in the ledger and decides how the task ends::

    fetched(report) → predicted(seconds) → converted(conversion) ─┬─ skipped (nothing to write)
                                                                  ├─ dry_run (kept locally)
                                                                  └─ WriteClaim → written(seconds)
    failed(phase, error) at any point: skipped or failed (:func:`autolabel.errors.classify`)

At ``converted`` the flow also decides the task's route
(:func:`autolabel.pipeline.routing.decide_route`): with ``--finalize-above`` a task whose
every category reaches its threshold is submitted, any other saved as a draft (written as
``submitted`` or ``draft_saved``); with ``--prioritize`` a draft's claim carries the
RedBrick priority to set after the write.

A :class:`WriteClaim` is issued only after the ``writing`` intent is committed: it is the
permission to write (plain and picklable, so the Ray driver hands it to the actor that holds
the label files). A write whose reply was lost is recorded again as in doubt
(:meth:`TaskFlow.in_doubt`); one left by a lost Ray actor is settled by
:meth:`TaskFlow.settle_lost_write`, and a later skip that is that write landing after all is
recorded as written (:meth:`TaskFlow.failed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autolabel.errors import TaskSkipped, classify
from autolabel.ledger import TaskState
from autolabel.pipeline.fetch import FetchReport, LabelsMarker
from autolabel.pipeline.routing import Route, all_dropped_reason, decide_route, draft_priority
from autolabel.pipeline.summary import TaskOutcome
from autolabel.redbrick import Task

if TYPE_CHECKING:
    from autolabel.pipeline.book import RunBook
    from autolabel.pipeline.steps import Converted

#: Why a task whose prediction is empty is skipped (``empty="skip"``).
EMPTY_REASON = (
    "the model found nothing in this task (empty prediction; use --empty submit to write it anyway)"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteClaim:
    """The permission to write one task: the ``writing`` event the run committed for it.

    ``before`` is the labels marker the write must still find on the task (the one seen
    when the task was first fetched, so that a write left in doubt by a lost actor is
    recognised if it lands later). ``finalize`` is the task's route (submit, or save a
    draft); ``priority`` the RedBrick task priority to set after the write (None: leave it).
    """

    run_id: str
    task_id: str
    intent_seq: int
    before: LabelsMarker
    finalize: bool = False
    priority: float | None = None

    def check(self) -> None:
        """Refuse a write with no committed intent (the one-writer rule)."""
        if self.intent_seq <= 0 or not self.run_id:
            raise RuntimeError(f"task {self.task_id}: no committed 'writing' intent to write")


class TaskFlow:
    """The state machine of one task in one run (see the module docstring).

    ``outcome`` is ``None`` until the task is fetched; ``status`` is the outcome's status
    once the task ended (else ``""``). Not thread-safe by itself: one task is worked on by
    one thread at a time; the :class:`~autolabel.pipeline.book.RunBook` it records into is.
    """

    def __init__(self, book: RunBook, task: Task) -> None:
        self.book = book
        self.task = task
        self.outcome: TaskOutcome | None = None
        self.claim: WriteClaim | None = None
        self.lost_before: LabelsMarker | None = None  # the marker of a write a lost actor sent
        self._marker = LabelsMarker(None, None)
        self._ended = False
        self.route = Route(book.mode == "final")

    @property
    def status(self) -> str:
        """How the task ended (``""`` while it is still on its way)."""
        return self.outcome.status if self.outcome is not None and self._ended else ""

    def fetched(self, report: FetchReport) -> None:
        """Record ``fetched``; the task as re-read replaces the listed one."""
        self.task = report.task
        self.outcome = TaskOutcome(
            report.task.task_id, report.task.name, "fetched", seconds={"fetch": report.seconds}
        )
        self._marker = report.marker
        self.book.handle.record(
            report.task.task_id,
            TaskState.FETCHED,
            task_name=report.task.name,
            input_checksum=report.input_checksum,
            detail={"seconds": report.seconds, "series": report.series},
        )
        self.book.emit(report.task.task_id, "fetch")

    def predicted(self, seconds: float, device_events: Sequence[Mapping[str, Any]] = ()) -> None:
        """Record ``predicted`` with the inference time and the model's device events (out
        of memory: a smaller batch, the CPU) during it."""
        outcome = self._started()
        outcome.seconds["infer"] = seconds
        detail: dict[str, Any] = {"seconds": seconds}
        if device_events:
            detail["device_events"] = [dict(e) for e in device_events]
        self.book.handle.record(
            self.task.task_id,
            TaskState.PREDICTED,
            task_name=self.task.name,
            detail=plain_json(detail),
        )
        self.book.emit(self.task.task_id, "infer")

    def converted(self, conversion: Converted) -> WriteClaim | None:
        """Record ``converted``, then the one decision of the run: end the task as
        ``skipped`` (nothing to write) or ``dry_run``, or commit the ``writing`` intent and
        return the claim to write it with."""
        outcome = self._started()
        outcome.seconds["convert"] = conversion.seconds
        outcome.files.update(conversion.files)
        outcome.volumes_ml = dict(conversion.volumes_ml)
        options = self.book.options
        self.route = decide_route(
            self.book.mode == "final",
            conversion.confidence,
            options.finalize_above,
            conversion.dropped,
        )
        priority = None
        if options.prioritize and not self.route.finalize:
            priority = draft_priority(conversion.confidence)
        outcome.routed(self.route, conversion.confidence, conversion.dropped, priority)
        self.book.handle.record(
            self.task.task_id,
            TaskState.CONVERTED,
            task_name=self.task.name,
            detail=plain_json(
                {"seconds": conversion.seconds, "volumes_ml": outcome.volumes_ml}
                | outcome.routing_detail()
            ),
        )
        if not conversion.entries:
            self.book.emit(self.task.task_id, "write")
            dropped = conversion.dropped  # --drop-below left nothing: say so, not "empty"
            why = all_dropped_reason(dropped, conversion.confidence) if dropped else EMPTY_REASON
            self._finish("skipped", why)
            return None
        if self.book.mode.written is TaskState.DRY_RUN:
            self.book.emit(self.task.task_id, "write")
            self._finish("dry_run", "")
            return None
        before = self.lost_before or self._marker
        event = self.book.intent(self.task, before, finalize=self.route.finalize)
        self.claim = WriteClaim(
            run_id=self.book.handle.run_id,
            task_id=self.task.task_id,
            intent_seq=event.seq,
            before=before,
            finalize=self.route.finalize,
            priority=priority,
        )
        return self.claim

    def in_doubt(self, reason: str) -> None:
        """Record that a sent write's reply was lost (before it is settled): a run killed
        while settling leaves it in doubt, and the next start settles it from this time."""
        assert self.claim is not None
        self.book.intent(
            self.task, self.claim.before, in_doubt=reason, finalize=self.claim.finalize
        )

    def written(self, seconds: float, note: str = "") -> TaskOutcome:
        """The claimed write went through: ``submitted`` or ``draft_saved`` as the route
        says; ``note`` is what went wrong after it (a priority not set)."""
        self._started().seconds["write"] = seconds
        self.book.emit(self.task.task_id, "write")
        return self._finish(self._written_state(), note)

    def failed(self, phase: str, exc: BaseException) -> TaskOutcome:
        """``exc`` stopped the task during ``phase``: skipped or failed as
        :func:`~autolabel.errors.classify` says (run-fatal errors are raised again). A skip
        of a task whose earlier write a lost actor sent is that write, landed after all."""
        if isinstance(exc, TaskSkipped) and self._lost_write_landed():
            return self._landed()
        status, reason = classify(exc)
        if status == "skipped":
            return self._finish(status, reason)
        try:
            return self._finish(status, f"{phase}: {reason}", error=exc, phase=phase)
        except (TypeError, ValueError) as unrecordable:
            # The failure must be recorded whatever the task left in its outcome: keep the
            # reason and drop the rest (a LedgerError, the database failing, stays fatal).
            seconds = dict(self.outcome.seconds) if self.outcome is not None else {}
            self.outcome = TaskOutcome(self.task.task_id, self.task.name, status, seconds=seconds)
            return self._finish(
                status,
                f"{phase}: {reason}",
                error=exc,
                phase=phase,
                detail={"unrecorded_detail": f"{type(unrecordable).__name__}: {unrecordable}"},
            )

    def lost_write(self) -> None:
        """The actor holding the claimed write was lost: the write may still land."""
        assert self.claim is not None
        self.lost_before = self.lost_before or self.claim.before

    def settle_lost_write(self) -> TaskOutcome | None:
        """Re-read a task whose write a lost actor sent: recorded as written if it landed,
        else ``None`` and the task is handed on (with the marker the next write must find)."""
        if self.claim is not None and self._lost_write_landed():
            return self._landed()
        self.outcome, self.claim = None, None
        return None

    def not_started(self) -> None:
        """Record ``queued`` for a task taken but not started when the run stopped (a task
        whose write a lost actor left in doubt is left for the next run to settle)."""
        if self.lost_before is None:
            self.book.handle.record(
                self.task.task_id,
                TaskState.QUEUED,
                task_name=self.task.name,
                detail={"reason": "not started: the run was stopped"},
            )

    def skipped(self, reason: str) -> TaskOutcome:
        """End a task the selection leaves out (not queued for the key, no such task)."""
        self.book.emit(self.task.task_id, "queued")
        return self._finish("skipped", reason)

    def unlisted(self, reason: str, error: BaseException) -> TaskOutcome:
        """Fail an entry of the listing RedBrick could not answer (a placeholder task)."""
        self.book.emit(self.task.task_id, "queued")
        return self._finish("failed", reason, error=error)

    # -- internals -----------------------------------------------------------------------

    def _started(self) -> TaskOutcome:
        if self.outcome is None:
            raise RuntimeError(f"task {self.task.task_id}: not fetched yet")
        return self.outcome

    def _written_state(self) -> str:
        state = TaskState.SUBMITTED if self.route.finalize else TaskState.DRAFT_SAVED
        return str(state.value)

    def _lost_write_landed(self) -> bool:
        return self.lost_before is not None and self.book.write_landed(
            self.task.task_id, self.lost_before, finalize=self.route.finalize
        )

    def _landed(self) -> TaskOutcome:
        return self._finish(
            self._written_state(),
            "",
            detail={"resolved": "the write of a lost actor had landed"},
        )

    def _finish(
        self,
        status: str,
        reason: str,
        *,
        error: BaseException | None = None,
        phase: str = "",
        detail: dict[str, Any] | None = None,
    ) -> TaskOutcome:
        outcome = self.outcome or TaskOutcome(self.task.task_id, self.task.name, status)
        outcome.status, outcome.reason, outcome.phase = status, reason, phase
        if error is not None:
            outcome.error_type = type(error).__name__
        self.outcome, self.claim, self._ended = outcome, None, True
        self.book.record_end(self.task, outcome, error=error, detail=detail)
        return outcome


def plain_json(value: Any) -> Any:
    """``value`` as strict JSON: NaN and infinities become None, unknown objects their text.

    What a task measured (volumes, seconds) must never make its own recording fail.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)

"""A run's bookkeeping: :class:`RunBook` settles writes left in doubt, streams the task
selection, records what each task's :class:`~autolabel.pipeline.flow.TaskFlow` decides in
the ledger, and collects outcomes for the summary and the listener. The local run and the
Ray driver both keep their books here; neither decides an outcome itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from autolabel.errors import GraphQLError
from autolabel.ledger import Ledger, Mode, ModelKey, Run, TaskEvent, TaskState
from autolabel.pipeline.engine import EngineStats
from autolabel.pipeline.fetch import LabelsMarker, select_tasks
from autolabel.pipeline.flow import TaskFlow, plain_json
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.routing import Thresholds, intent_finalizes
from autolabel.pipeline.submit import default_settle_window, settle, write_landed
from autolabel.pipeline.summary import RunListener, RunSummary, TaskOutcome, WorkerStats
from autolabel.redbrick import Project, Task
from autolabel.redbrick.types import ListingError

log = logging.getLogger(__name__)


class Schedule(Protocol):
    """How a run's tasks are worked on: the local threads or the Ray actors."""

    @property
    def workers(self) -> list[WorkerStats]:
        """Per-worker statistics (Ray actors; empty for a local run)."""

    def run(self, tasks: Iterator[Task]) -> EngineStats:
        """Work on ``tasks`` (streamed) until done or the book's ``stop`` is set."""


class RunBook:
    """The bookkeeping of one run, whatever schedules its tasks.

    It owns the ledger handle, the outcomes and the listeners: it settles writes left in
    doubt, streams the tasks to do, and records each task's state changes exactly as the
    local run does (the Ray driver of :mod:`autolabel.pipeline.ray` records through it too, so the
    ledger reads the same). Thread-safe: stage workers record concurrently.
    """

    def __init__(
        self,
        project: Project,
        key: ModelKey,
        options: RunOptions,
        ledger: Ledger,
        stop: threading.Event | None,
        listener: RunListener | None = None,
    ) -> None:
        self.project = project
        self.key = key
        self.options = options
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self.listener = listener
        self.outcomes: list[TaskOutcome] = []
        self.already_done = 0
        self.resolved = 0
        self._fed = 0
        self._unlisted = 0
        #: The whole selection was taken from the listing (a stop after that left nothing).
        self.listed_all = False
        self._lock = threading.Lock()
        self._handle: Run | None = None
        self._began = time.perf_counter()

    @property
    def handle(self) -> Run:
        """The ledger handle of the run (after :meth:`begin`)."""
        if self._handle is None:
            raise RuntimeError("RunBook.begin() has not been called")
        return self._handle

    def begin(self, command: tuple[str, ...]) -> Run:
        """Record the start of the run in the ledger."""
        self._began = time.perf_counter()
        self._handle = self.ledger.start_run(
            mode=self.options.mode,
            command=command,
            options=_loggable(self.options),
            model=self.key,
        )
        return self._handle

    def summary(self, stats: EngineStats | None, **extra: Any) -> RunSummary:
        """The run's :class:`RunSummary` so far."""
        return RunSummary(
            run_id=self.handle.run_id,
            mode=self.options.mode,
            stage=self.options.stage,
            model=self.key,
            outcomes=self.outcomes,
            stages=stats,
            wall_s=self.elapsed_s,
            resolved=self.resolved,
            already_done=self.already_done,
            notes=self.notes(),
            interrupted=self.stop.is_set() and not self.listed_all,
            **extra,
        )

    def notes(self) -> list[str]:
        """What the user should know about where this run's writes go."""
        if self.options.mode != "final":
            return []
        sampled = self.project.sampled_review_after(self.options.stage)
        if sampled is None:
            return []
        stage, share = sampled
        return [
            f"{stage} reviews only {share:.0%} of tasks (reviewPercent {share:g}): the other "
            "submitted tasks skip review and can go straight to Ground Truth"
        ]

    @property
    def elapsed_s(self) -> float:
        """Seconds since :meth:`begin`."""
        return time.perf_counter() - self._began

    def emit(self, task_id: str, phase: str) -> None:
        """Tell the listener that ``task_id`` was queued or finished ``phase``."""
        if self.listener is not None:
            self.listener.on_phase(task_id, phase)

    # -- which tasks ---------------------------------------------------------------------

    def tasks(self) -> Iterator[Task]:
        """The tasks to work on, streamed from the listing: those the ledger marks done for
        this model and mode are counted in :attr:`already_done` and left out (unless
        ``force``); at most ``limit`` are yielded; each is announced as ``queued``."""
        options = self.options
        done = set() if options.force else self.ledger.done_task_ids(self.key, options.mode)
        for task in select_tasks(
            self.project,
            options.stage,
            task_ids=options.task_ids,
            name=options.name,
            on_skip=self._skip_unselected,
            on_listing_error=self._listing_error,
        ):
            if task.task_id in done:
                self.already_done += 1
                continue
            if options.limit is not None and self._fed >= options.limit:
                break
            self._fed += 1
            self.emit(task.task_id, "queued")
            yield task
        self.listed_all = True  # nothing of the run's selection is left for a next run

    def _skip_unselected(self, task_id: str, name: str, reason: str) -> None:
        self.start(_stub(task_id, name)).skipped(reason)

    def _listing_error(self, error: ListingError) -> None:
        """A listing entry RedBrick could not answer: a task whose id survived is still
        worked on (its own re-read decides); an entry answered null is recorded as failed
        under a placeholder id, and the run goes on."""
        if error.task_id is not None:
            log.warning("listing %s: %s", error.task_id, error.message)
            return
        self._unlisted += 1
        placeholder = f"unlisted-{self._unlisted}"
        reason = (
            f"RedBrick could not list one task ({error.operation}: {error.message}); "
            "run again to pick it up, or check the task in RedBrick"
        )
        failure = GraphQLError([error.message], operation=error.operation)
        self.start(_stub(placeholder, "")).unlisted(reason, failure)

    def settle_in_doubt(self) -> int:
        """Record the writes a killed run sent but did not confirm, if RedBrick has them.

        Each is settled patiently (:func:`autolabel.pipeline.submit.settle`): re-read with backoff
        until RedBrick shows it or the settle window, counted from its last ``writing``
        event, has passed. One that did not land is left to the run like any other task.
        """
        if self.options.mode == "dry-run":
            return 0
        window = self.options.settle_window_s
        if window is None:
            window = default_settle_window(self.project)
        for event in self.ledger.in_doubt_writes(self.key):
            if event.mode != self.options.mode:
                continue
            before = LabelsMarker(
                event.detail.get("labels_before_by"), event.detail.get("labels_before_at")
            )
            # the route the intent recorded (a run routing by confidence submits some tasks)
            finalize = intent_finalizes(event.detail, event.mode)
            landed, _ = settle(
                self.project,
                event.task_id,
                stage_name=str(event.detail.get("stage") or self.options.stage),
                finalize=finalize,
                before=before,
                deadline=event.at + window,
            )
            if landed:
                self.handle.record(
                    event.task_id,
                    TaskState.SUBMITTED if finalize else TaskState.DRAFT_SAVED,
                    task_name=event.task_name,
                    detail={"resolved": "the write of an interrupted run had landed"},
                )
                self.resolved += 1
        return self.resolved

    def write_landed(
        self, task_id: str, before: LabelsMarker, *, finalize: bool, stage: str | None = None
    ) -> bool:
        """Re-read ``task_id``: did this key's write (made after ``before``; a submit when
        ``finalize``) land?"""
        task = self.project.get_task(task_id)
        return write_landed(
            task,
            user_id=self.project.current_user_id,
            stage_name=stage or self.options.stage,
            finalize=finalize,
            before=before,
        )

    # -- what the flows record -----------------------------------------------------------

    def start(self, task: Task) -> TaskFlow:
        """The flow of ``task`` through this run (:class:`~autolabel.pipeline.flow.TaskFlow`)."""
        return TaskFlow(self, task)

    @property
    def mode(self) -> Mode:
        """The run's mode."""
        return Mode(self.options.mode)

    def intent(
        self, task: Task, before: LabelsMarker, in_doubt: str = "", *, finalize: bool
    ) -> TaskEvent:
        """Record (and commit) ``writing``: the claim that must precede the write, and its
        route (``finalize``: a submit, else a draft).

        With ``in_doubt`` (the reason a sent write's reply was lost) it is recorded again,
        before the write is settled: a run killed while settling leaves the write in doubt,
        and the next start settles it counting from this time.
        """
        detail: dict[str, Any] = {
            "stage": self.options.stage,
            "labels_before_by": before.created_by,
            "labels_before_at": before.created_at,
            "finalize": finalize,
        }
        if in_doubt:
            detail["in_doubt"] = in_doubt
        return self.handle.record(
            task.task_id, TaskState.WRITING, task_name=task.name, detail=detail
        )

    def record_end(
        self,
        task: Task,
        outcome: TaskOutcome,
        *,
        error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the final state a flow decided, and tell the outcome listener."""
        record: dict[str, Any] = {"seconds": sum(outcome.seconds.values())}
        if outcome.reason:
            record["reason"] = outcome.reason
        if outcome.volumes_ml:
            record["volumes_ml"] = outcome.volumes_ml
        if outcome.files:
            record["files"] = outcome.files
        if outcome.seconds:
            record["stage_seconds"] = outcome.seconds
        if outcome.status in ("draft_saved", "submitted", "dry_run"):
            record.update(outcome.routing_detail())
        record.update(detail or {})
        self.handle.record(
            task.task_id,
            TaskState(outcome.status),
            task_name=task.name,
            detail=plain_json(record),
            error=error,
        )
        with self._lock:
            self.outcomes.append(outcome)
        if self.listener is not None:
            self.listener.on_task(outcome)


def _stub(task_id: str, name: str) -> Task:
    return Task(
        task_id=task_id,
        name=name,
        stage_name="",
        state=None,
        assignee=None,
        assignee_email=None,
        storage_id=None,
        series=(),
        items=(),
        items_loaded=False,
        labels=None,
        meta_data=None,
        priority=None,
        updated_at=None,
        raw={},
    )


def _loggable(options: RunOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(options).items():
        out[key] = str(value) if isinstance(value, Path) else value
        if isinstance(value, Thresholds):
            out[key] = value.to_json()
    if options.mapping is not None:
        out["mapping"] = dict(options.mapping)
    return out

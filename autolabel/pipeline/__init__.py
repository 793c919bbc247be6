"""The run: fetch → infer → convert and write, overlapped, resumable, exactly once.

:func:`run` is what ``autolabel run`` and ``autolabel.run(...)`` do:

1. under the work folder's lock (:mod:`autolabel.pipeline.lock`), settle the writes a killed
   run left in doubt (:meth:`Ledger.in_doubt_writes`), patiently, so that none is sent
   twice;
2. stream the tasks queued in the stage for the API key (or those asked for), leaving out
   those the same model version already did (unless ``force``);
3. push each through three overlapped stages (:mod:`autolabel.pipeline.engine`): *fetch* (re-read,
   download and decode), *infer* (one worker per device, model kept warm), and *write*
   (label NIfTI, payload, preview; then a draft, a submit, or nothing in a dry run);
4. record every state change in the ledger and return a :class:`RunSummary`.

A failing task is recorded with its error and the run goes on; authentication failures,
ledger failures and an unreachable RedBrick stop the run at once.

Two parts are shared with the Ray run (:mod:`autolabel.pipeline.ray`), so that the logic exists
once: :class:`~autolabel.pipeline.steps.TaskSteps` (what is done to one task: fetch, predict,
convert, write) and :class:`~autolabel.pipeline.book.RunBook` (the run's bookkeeping: in-doubt
settlement, the streamed task selection, every ledger event, outcomes and listeners). Only
the scheduling, here, differs. The values a run takes and gives back live in
:mod:`autolabel.pipeline.summary`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from autolabel.files import remove_stale_temps, task_folder
from autolabel.inference.spec import SegmentationModel
from autolabel.ledger import Ledger, ledger_path
from autolabel.pipeline.book import RunBook
from autolabel.pipeline.engine import Stage, StageEngine
from autolabel.pipeline.fetch import (
    FetchedTask,
)
from autolabel.pipeline.lock import lock_work_folder
from autolabel.pipeline.steps import EMPTY_REASON, TaskSteps
from autolabel.pipeline.summary import (
    MODES,
    OutcomeListener,
    RunOptions,
    RunSummary,
    StageListener,
    TaskOutcome,
    WorkerStats,
    model_key,
)
from autolabel.redbrick import Project, Task


@dataclass
class _Job:
    """One task on its way through the stages."""

    task: Task
    fetched: FetchedTask | None = None
    label_maps: list[npt.NDArray[np.integer]] = field(default_factory=list)
    outcome: TaskOutcome | None = None


def run(
    project: Project,
    model: SegmentationModel,
    options: RunOptions,
    *,
    ledger: Ledger | None = None,
    stop: threading.Event | None = None,
    on_stage: StageListener | None = None,
    on_task: OutcomeListener | None = None,
    command: tuple[str, ...] = (),
) -> RunSummary:
    """Pre-label the run's tasks with ``model`` (see the module docstring).

    ``ledger`` defaults to the one in ``options.work_dir``, opened and closed here under the
    work folder's lock (:func:`autolabel.pipeline.lock.lock_work_folder`, waiting
    ``options.lock_wait_s``; a caller passing ``ledger`` holds the lock itself).
    ``stop`` set from elsewhere (a signal handler) stops taking new tasks; tasks in hand
    finish. Raises :class:`~autolabel.errors.AuthError`,
    :class:`~autolabel.errors.TransportError` (RedBrick unreachable while listing),
    :class:`~autolabel.errors.LedgerError`, :class:`~autolabel.errors.ConfigError` (its
    :class:`~autolabel.errors.WorkFolderBusy` when another run holds the folder) and
    :class:`~autolabel.errors.ConversionError` (a model class with no taxonomy category)
    -- everything else is per task.
    """
    steps = TaskSteps(project, model, options)
    if ledger is not None:
        runbook = RunBook(project, steps.key, options, ledger, stop, on_stage, on_task)
        return _Runner(runbook, steps).go(command)
    with (
        lock_work_folder(options.work_dir, wait_s=options.lock_wait_s),
        Ledger(ledger_path(options.work_dir)) as book,
    ):
        runbook = RunBook(project, steps.key, options, book, stop, on_stage, on_task)
        return _Runner(runbook, steps).go(command)


class _Runner:
    """The local schedule of a run: three overlapped stages on one machine."""

    def __init__(self, book: RunBook, steps: TaskSteps) -> None:
        self.book = book
        self.steps = steps
        self.downloads = book.options.work_dir / "downloads"

    def go(self, command: tuple[str, ...]) -> RunSummary:
        book, options = self.book, self.book.options
        handle = book.begin(command)
        status = "failed"
        try:
            # Leftovers of a killed run's writes (kill -9 cannot clean up after itself).
            remove_stale_temps(options.results_dir)
            book.settle_in_doubt()
            engine: StageEngine[_Job] = StageEngine(
                [
                    Stage("fetch", self._fetch, options.fetch_workers),
                    # one worker per warm replica (--device cuda:0,cuda:1), else one
                    Stage("infer", self._infer, len(getattr(self.steps.model, "replicas", [0]))),
                    Stage("write", self._write, options.write_workers),
                ],
                on_error=lambda job, stage, exc: self._failed(job, stage, exc),
                queue_depth=options.queue_depth,
                stop=book.stop,
            )
            stats = engine.run(_Job(task) for task in book.tasks())
            status = "interrupted" if book.stop.is_set() else "finished"
        finally:
            handle.finish(status)
        return book.summary(stats)

    def _failed(self, job: _Job, stage: str, exc: BaseException) -> None:
        self.book.failed(job.task, job.outcome, stage, exc)

    def _fetch(self, job: _Job) -> bool:
        began = time.perf_counter()
        task = job.task
        job.fetched = self.steps.fetch(task, task_folder(self.downloads, task.task_id))
        job.task = job.fetched.task
        seconds = time.perf_counter() - began
        fetched = job.fetched
        job.outcome = self.book.fetched(
            task, fetched.task, fetched.input_checksum, len(fetched.series), seconds
        )
        self.book.emit(task.task_id, "fetch")
        return True

    def _infer(self, job: _Job) -> bool:
        assert job.fetched is not None and job.outcome is not None
        began = time.perf_counter()
        job.label_maps = self.steps.predict(job.fetched)
        self.book.predicted(job.task, job.outcome, time.perf_counter() - began)
        self.book.emit(job.task.task_id, "infer")
        return True

    def _write(self, job: _Job) -> bool:
        assert job.fetched is not None and job.outcome is not None
        book, task, outcome = self.book, job.task, job.outcome
        began = time.perf_counter()
        entries = self.steps.convert(job.fetched, job.label_maps, outcome)
        job.label_maps = []  # free memory before the network wait
        book.converted(task, outcome, time.perf_counter() - began)
        if not entries:
            book.emit(task.task_id, "write")
            book.finish(task, outcome, "skipped", EMPTY_REASON)
            return False
        if book.options.mode == "dry-run":
            book.emit(task.task_id, "write")
            book.finish(task, outcome, "dry_run", "")
            return True
        marker = job.fetched.marker
        began = time.perf_counter()
        status = self.steps.write(
            task.task_id,
            entries,
            marker,
            record_intent=lambda: book.intent(task, marker),
            record_in_doubt=lambda reason: book.intent(task, marker, in_doubt=reason),
        )
        outcome.seconds["write"] = time.perf_counter() - began
        book.emit(task.task_id, "write")
        book.finish(task, outcome, status, "")
        return True


__all__ = [
    "EMPTY_REASON",
    "MODES",
    "OutcomeListener",
    "RunBook",
    "RunOptions",
    "RunSummary",
    "StageListener",
    "TaskOutcome",
    "TaskSteps",
    "WorkerStats",
    "model_key",
    "run",
]

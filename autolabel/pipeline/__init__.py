"""The run, top to bottom: ``autolabel run`` (ARCHITECTURE.md follows one task through it)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from autolabel.files import remove_stale_temps
from autolabel.inference.spec import SegmentationModel
from autolabel.ledger import Ledger, ledger_path
from autolabel.pipeline.book import RunBook, Schedule
from autolabel.pipeline.local import LocalSchedule
from autolabel.pipeline.lock import lock_work_folder
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.steps import TaskSteps
from autolabel.pipeline.summary import RunListener, RunSummary, TaskOutcome
from autolabel.redbrick import Project


def run(project: Project, model: SegmentationModel, options: RunOptions, *,
        ledger: Ledger | None = None, stop: threading.Event | None = None,
        listener: RunListener | None = None, command: tuple[str, ...] = ()) -> RunSummary:  # fmt: skip
    """Pre-label the run's tasks with ``model`` on this machine; per-task failures are in
    the summary, run-fatal errors (:data:`autolabel.errors.RUN_FATAL`, RedBrick unreachable
    while listing, a model class with no category) raise. ``ledger`` given: the caller
    holds the work folder's lock. ``stop`` set: no new task starts, tasks in hand finish."""
    steps = TaskSteps(project, model, options)  # guards the model, maps it onto the taxonomy
    with open_books(options, ledger) as books:
        book = RunBook(project, steps.key, options, books, stop, listener)
        return conduct(book, LocalSchedule(book, steps), command)


@contextlib.contextmanager
def open_books(options: RunOptions, ledger: Ledger | None) -> Iterator[Ledger]:
    """``ledger``, or the work folder's own, opened under its lock (one run per folder)."""
    if ledger is not None:
        yield ledger
        return
    with (
        lock_work_folder(options.work_dir, wait_s=options.lock_wait_s),
        Ledger(ledger_path(options.work_dir)) as own,
    ):
        yield own


def conduct(book: RunBook, schedule: Schedule, command: tuple[str, ...]) -> RunSummary:
    """One run's books around its schedule (the local threads or the Ray actors)."""
    handle, status = book.begin(command), "failed"
    try:
        remove_stale_temps(book.options.results_dir)  # what a killed run half wrote
        book.settle_in_doubt()  # writes a killed run sent: landed or not, before any task
        stats = schedule.run(book.tasks())  # each task: fetch → infer → convert → write
        status = "interrupted" if book.stop.is_set() else "finished"
    finally:
        handle.finish(status)
    return book.summary(stats, workers=schedule.workers)


__all__ = ["RunListener", "RunOptions", "RunSummary", "TaskOutcome", "conduct", "run"]

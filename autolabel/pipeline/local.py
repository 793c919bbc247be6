"""The local schedule of a run: three overlapped phases on one machine.

Each task goes *fetch* (re-read, download, decode; ``fetch_workers`` threads) → *infer*
(one thread per warm model replica: the model stays warm on its device) → *write* (label
files and payload, then the write; ``write_workers`` threads), with bounded queues between
them (:mod:`autolabel.pipeline.engine`). Preview PNGs are rendered by their own worker
(:mod:`autolabel.pipeline.previews`), off the write's path. The work is :class:`~autolabel.pipeline.steps.TaskSteps`;
every outcome is the task's :class:`~autolabel.pipeline.flow.TaskFlow` decision -- this
module only schedules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from autolabel.files import task_folder
from autolabel.inference.confidence import SeriesConfidence
from autolabel.pipeline.book import RunBook
from autolabel.pipeline.engine import EngineStats, Stage, StageEngine
from autolabel.pipeline.fetch import FetchedTask
from autolabel.pipeline.flow import TaskFlow
from autolabel.pipeline.previews import PreviewWorker
from autolabel.pipeline.steps import TaskSteps
from autolabel.pipeline.summary import WorkerStats
from autolabel.redbrick import Task


@dataclass
class _Job:
    """One task on its way through the phases."""

    flow: TaskFlow
    fetched: FetchedTask | None = None
    label_maps: list[npt.NDArray[np.integer]] = field(default_factory=list)
    confidence: list[SeriesConfidence | None] = field(default_factory=list)


class LocalSchedule:
    """Runs a book's tasks through the phases on this machine's threads."""

    def __init__(self, book: RunBook, steps: TaskSteps) -> None:
        self.book = book
        self.steps = steps
        self.downloads = book.options.work_dir / "downloads"

    @property
    def workers(self) -> list[WorkerStats]:
        """Per-worker statistics: none (a local run has no Ray actors)."""
        return []

    def run(self, tasks: Iterator[Task]) -> EngineStats:
        """Run ``tasks`` (streamed) until done or the book's ``stop`` is set."""
        options = self.book.options
        engine: StageEngine[_Job] = StageEngine(
            [
                Stage("fetch", self._fetch, options.fetch_workers),
                # one worker per warm replica (--device cuda:0,cuda:1), else one
                Stage("infer", self._infer, len(getattr(self.steps.model, "replicas", [0]))),
                Stage("write", self._write, options.write_workers),
            ],
            on_error=_failed,
            queue_depth=options.queue_depth,
            stop=self.book.stop,
        )
        self.steps.previews = PreviewWorker()  # previews off the write's path
        try:
            return engine.run(_Job(self.book.start(task)) for task in tasks)
        finally:
            self.steps.previews.drain()  # every preview on disk before the run returns
            self.steps.previews = None

    def _fetch(self, job: _Job) -> bool:
        task = job.flow.task
        job.fetched = self.steps.fetch(task, task_folder(self.downloads, task.task_id))
        job.flow.fetched(job.fetched.report())
        return True

    def _infer(self, job: _Job) -> bool:
        assert job.fetched is not None
        prediction = self.steps.predict(job.fetched)
        job.label_maps, job.confidence = prediction.label_maps, prediction.confidence
        job.flow.predicted(prediction.seconds, prediction.device_events)
        return True

    def _write(self, job: _Job) -> bool:
        assert job.fetched is not None
        converted = self.steps.convert(job.fetched, job.label_maps, job.confidence)
        job.label_maps = []  # free memory before the network wait
        claim = job.flow.converted(converted)
        if claim is not None:
            done = self.steps.write(claim, converted.entries, on_in_doubt=job.flow.in_doubt)
            job.flow.written(done.seconds, done.note)
        return job.flow.status != "skipped"


def _failed(job: _Job, phase: str, exc: BaseException) -> None:
    job.flow.failed(phase, exc)

"""The run: fetch → infer → convert and write, overlapped, resumable, exactly once.

:func:`run` is what ``autolabel run`` and ``autolabel.run(...)`` do:

1. settle the writes a killed run left in doubt (:meth:`Ledger.in_doubt_writes`), so that
   none is sent twice;
2. stream the tasks queued in the stage for the API key (or those asked for), leaving out
   those the same model version already did (unless ``force``);
3. push each through three overlapped stages (:mod:`autolabel.engine`): *fetch* (re-read,
   download and decode), *infer* (one worker per device, model kept warm), and *write*
   (label NIfTI, payload, preview; then a draft, a submit, or nothing in a dry run);
4. record every state change in the ledger and return a :class:`RunSummary`.

A failing task is recorded with its error and the run goes on; authentication failures,
ledger failures and an unreachable RedBrick stop the run at once.

Two parts are shared with the Ray run (:mod:`autolabel.scale`), so that the logic exists
once: :class:`TaskSteps` (what is done to one task: fetch, predict, convert, write) and
:class:`RunBook` (the run's bookkeeping: in-doubt settlement, the streamed task selection,
every ledger event, outcomes and listeners). Only the scheduling differs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel import convert
from autolabel.engine import EngineStats, Stage, StageEngine
from autolabel.errors import (
    AuthError,
    AutolabelError,
    ConfigError,
    LedgerError,
    PlatformError,
    TransportError,
)
from autolabel.fetch import (
    FetchedTask,
    LabelsMarker,
    TaskSkipped,
    fetch_task,
    select_tasks,
)
from autolabel.inference.spec import ModelSpec, SegmentationModel
from autolabel.ledger import Ledger, ModelKey, Run, TaskEvent, TaskState, ledger_path
from autolabel.overlay import save_overlay
from autolabel.records import Volume
from autolabel.redbrick import Project, Task
from autolabel.submit import write_landed, write_task

#: Modes of a run: save drafts, submit, or write nothing to RedBrick.
MODES = ("draft", "final", "dry-run")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run does (see :func:`run`).

    ``mode`` is ``draft`` (the default: save drafts), ``final`` (submit) or ``dry-run``
    (write nothing to RedBrick; keep label files, payloads and previews in ``out_dir``).
    ``task_ids`` / ``name`` pick tasks instead of all assigned ones; ``limit`` caps them.
    ``mapping`` maps model label names to taxonomy categories (``None`` drops a class) on
    top of the model card's default mapping. ``empty`` is the policy for a task whose
    prediction is empty: ``skip`` it, ``submit`` it empty, or ``flag`` it (write it and
    say so). ``work_dir`` holds the ledger and temporary downloads; ``out_dir`` (default
    ``work_dir/results``) the per-task results.
    """

    stage: str = "Label"
    mode: str = "draft"
    task_ids: tuple[str, ...] = ()
    name: str | None = None
    limit: int | None = None
    force: bool = False
    work_dir: Path = Path("autolabel-work")
    out_dir: Path | None = None
    mapping: Mapping[str | int, convert.Target] | None = None
    allow_unmapped: bool = False
    empty: convert.EmptyPolicy = "skip"
    instances: bool = False
    min_component_voxels: int = 0
    previews: bool = True
    fetch_workers: int = 2
    write_workers: int = 2
    queue_depth: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.empty not in ("skip", "submit", "flag"):
            raise ConfigError(f"empty must be skip, submit or flag, got {self.empty!r}")
        for name in ("fetch_workers", "write_workers", "queue_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def results_dir(self) -> Path:
        """Where per-task results go."""
        return self.out_dir if self.out_dir is not None else self.work_dir / "results"


@dataclass
class TaskOutcome:
    """How one task ended in a run.

    ``status`` is a ledger state value: ``draft_saved``, ``submitted``, ``dry_run``,
    ``skipped`` or ``failed``. ``reason`` explains a skip or failure; ``seconds`` holds the
    duration of each stage; ``volumes_ml`` the predicted volume per taxonomy category;
    ``files`` the local results (label files, payload, preview); ``worker`` the Ray actor
    that did the task (empty in a local run).
    """

    task_id: str
    task_name: str
    status: str
    reason: str = ""
    error_type: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": self.status,
            "reason": self.reason,
            "error_type": self.error_type,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
            "files": dict(self.files),
        }
        if self.worker:
            out["worker"] = self.worker
        return out


@dataclass
class WorkerStats:
    """What one worker of a scaled-out run (a Ray actor) did.

    ``tasks`` counts the tasks it ended (written, skipped or failed), ``failed`` those that
    failed; ``busy_s`` sums its per-task seconds and ``alive_s`` is how long it was up.
    ``died`` says the actor was lost during the run; ``requeued`` lists the tasks it held
    then, which were handed to other actors.
    """

    name: str
    node: str
    device: str
    tasks: int = 0
    failed: int = 0
    busy_s: float = 0.0
    alive_s: float = 0.0
    died: str = ""
    requeued: list[str] = field(default_factory=list)

    @property
    def tasks_per_min(self) -> float:
        """Tasks ended per minute of the worker's life (0 when it did none)."""
        return 60.0 * self.tasks / self.alive_s if self.alive_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "node": self.node,
            "device": self.device,
            "tasks": self.tasks,
            "failed": self.failed,
            "busy_s": round(self.busy_s, 3),
            "alive_s": round(self.alive_s, 3),
            "tasks_per_min": round(self.tasks_per_min, 2),
            "died": self.died,
            "requeued": list(self.requeued),
        }


@dataclass
class RunSummary:
    """What a run did: one :class:`TaskOutcome` per task it touched, and stage timings.

    ``workers`` holds per-actor statistics when the run was spread over Ray (else empty).
    """

    run_id: str
    mode: str
    stage: str
    model: ModelKey
    outcomes: list[TaskOutcome]
    stages: EngineStats | None
    wall_s: float
    resolved: int = 0
    already_done: int = 0
    workers: list[WorkerStats] = field(default_factory=list)

    def _with(self, *statuses: str) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def done(self) -> list[TaskOutcome]:
        """Tasks written (or kept locally in a dry run)."""
        return self._with("draft_saved", "submitted", "dry_run")

    @property
    def skipped(self) -> list[TaskOutcome]:
        """Tasks left alone, each with its reason."""
        return self._with("skipped")

    @property
    def failed(self) -> list[TaskOutcome]:
        """Tasks that failed, each with its error."""
        return self._with("failed")

    @property
    def exit_code(self) -> int:
        """0 when no task failed, 1 otherwise."""
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        stages = []
        if self.stages is not None:
            for s in self.stages.stages:
                stages.append(
                    {
                        "stage": s.name,
                        "workers": s.workers,
                        "tasks": s.started,
                        "failed": s.failed,
                        "busy_s": round(s.busy_s, 3),
                        "per_task_s": round(s.per_job_s, 3),
                    }
                )
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "mode": self.mode,
            "stage": self.stage,
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "weights_hash": self.model.weights_hash,
            },
            "counts": {
                "done": len(self.done),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
                "already_done": self.already_done,
                "resolved_in_doubt": self.resolved,
            },
            "wall_s": round(self.wall_s, 3),
            "stages": stages,
            "tasks": [o.to_dict() for o in self.outcomes],
        }
        if self.workers:
            out["workers"] = [w.to_dict() for w in self.workers]
        return out


@dataclass
class _Job:
    """One task on its way through the stages."""

    task: Task
    fetched: FetchedTask | None = None
    label_maps: list[npt.NDArray[np.integer]] = field(default_factory=list)
    outcome: TaskOutcome | None = None


#: Called after each stage of each task: ``(task_id, stage name)``.
StageListener = Callable[[str, str], None]
#: Called when a task ends: its outcome.
OutcomeListener = Callable[[TaskOutcome], None]

#: Why a task whose prediction is empty is skipped (``empty="skip"``).
EMPTY_REASON = (
    "the model found nothing in this task (empty prediction; use --empty submit to write it anyway)"
)


def model_key(model: SegmentationModel) -> ModelKey:
    """The ledger identity of a loaded model."""
    return spec_key(model.spec)


def spec_key(spec: ModelSpec) -> ModelKey:
    """The ledger identity of a model spec (name, version, weights hash)."""
    return ModelKey(spec.name, spec.version, spec.weights_sha256)


def segment_map_for(
    spec: ModelSpec, taxonomy: Mapping[str, Any], options: RunOptions
) -> convert.SegmentMap:
    """The model label → taxonomy category map of a run; :class:`ConfigError` when a model
    class has no category (unless ``options.allow_unmapped``)."""
    mapping: dict[str | int, convert.Target] = {
        spec.labels[i]: spec.category_of(i) for i in spec.labels
    }
    mapping.update(options.mapping or {})
    return convert.build_segment_map(
        dict(spec.labels), taxonomy, mapping, allow_unmapped=options.allow_unmapped
    )


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

    ``ledger`` defaults to the one in ``options.work_dir`` (opened and closed here).
    ``stop`` set from elsewhere (a signal handler) stops taking new tasks; tasks in hand
    finish. Raises :class:`~autolabel.errors.AuthError`,
    :class:`~autolabel.errors.TransportError` (RedBrick unreachable while listing),
    :class:`~autolabel.errors.LedgerError` and :class:`~autolabel.errors.ConfigError`
    (e.g. a model class with no taxonomy category) -- everything else is per task.
    """
    steps = TaskSteps(project, model, options)
    own_ledger = ledger is None
    book = ledger if ledger is not None else Ledger(ledger_path(options.work_dir))
    try:
        runbook = RunBook(project, steps.key, options, book, stop, on_stage, on_task)
        return _Runner(runbook, steps).go(command)
    finally:
        if own_ledger:
            book.close()


class TaskSteps:
    """The work done on one task, with no ledger and no scheduling.

    The local run (:func:`run`) and the Ray actors of :mod:`autolabel.scale` call the same
    steps, so a task is fetched, predicted, converted and written the same way on both:

    * :meth:`fetch` -- re-read, guard, download and decode (retrying transient failures);
    * :meth:`predict` -- one label map per series;
    * :meth:`convert` -- label files, previews and the ``series`` payload in
      ``options.results_dir``; fills the outcome's files and volumes;
    * :meth:`write` -- the guarded, exactly-once write of :func:`autolabel.submit.write_task`;
      the caller's ``record_intent`` must commit the ``writing`` intent.

    Errors are raised as they come (:class:`~autolabel.fetch.TaskSkipped` for a task that
    must be left alone); the caller records them.
    """

    def __init__(self, project: Project, model: SegmentationModel, options: RunOptions) -> None:
        self.project = project
        self.model = model
        self.options = options
        self.key = model_key(model)
        self.segment_map = segment_map_for(model.spec, project.taxonomy, options)
        self.provenance = {"Model": f"{self.key.name} {self.key.version}"}

    def fetch(self, task: Task, folder: Path) -> FetchedTask:
        """Re-read, check and decode ``task`` (downloading into ``folder``, removed after)."""
        return _with_retries(lambda: fetch_task(self.project, task, self.options.stage, folder))

    def predict(self, fetched: FetchedTask) -> list[npt.NDArray[np.integer]]:
        """The model's label map of each series of ``fetched``."""
        return [self.model.predict(series.volume) for series in fetched.series]

    def convert(
        self,
        fetched: FetchedTask,
        label_maps: Sequence[npt.NDArray[np.integer]],
        outcome: TaskOutcome,
    ) -> list[dict[str, Any]]:
        """Write the task's label files, previews and payload; return the ``series`` entries.

        An empty list means nothing is left to write (every series empty under the ``skip``
        policy). ``outcome.files`` and ``outcome.volumes_ml`` are filled in.
        """
        options = self.options
        task = fetched.task
        folder = options.results_dir / _safe_name(task.name or task.task_id)
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        volumes: dict[str, float] = {}
        for series, label_map in zip(fetched.series, label_maps, strict=True):
            path = folder / f"series-{series.index}-labels.nii.gz"
            entry = convert.to_series(
                label_map,
                series.volume,
                self.segment_map,
                name=series.name or f"{task.name or task.task_id}-{series.index}",
                path=path,
                empty=options.empty,
                instances=options.instances,
                min_component_voxels=options.min_component_voxels,
            )
            if entry is None:
                continue
            entries.append(dict(entry))
            outcome.files[f"labels-{series.index}"] = str(path)
            for category, ml in _volumes_ml(label_map, series.volume, self.segment_map).items():
                volumes[category] = volumes.get(category, 0.0) + ml
            if options.previews:
                preview = folder / f"series-{series.index}-preview.png"
                save_overlay(
                    preview,
                    np.asarray(series.volume.array),
                    label_map,
                    series.volume.spacing,
                    orientation=series.volume.orientation,
                    names=dict(self.model.spec.labels),
                    title=f"{task.name} · {series.name or series.index} · {self.key}",
                )
                outcome.files[f"preview-{series.index}"] = str(preview)
        outcome.volumes_ml = volumes
        payload_path = folder / "series.json"
        _write_json(payload_path, {"taskId": task.task_id, "series": entries})
        outcome.files["payload"] = str(payload_path)
        return entries

    def write(
        self,
        task_id: str,
        entries: Sequence[Mapping[str, Any]],
        before: LabelsMarker,
        *,
        record_intent: Callable[[], object],
    ) -> str:
        """Save or submit ``entries`` (see :func:`autolabel.submit.write_task`); return the
        ledger state it reached (``draft_saved`` or ``submitted``)."""
        finalize = self.options.mode == "final"
        write_task(
            self.project,
            task_id,
            self.options.stage,
            entries,
            finalize=finalize,
            before=before,
            provenance=self.provenance,
            record_intent=record_intent,
        )
        return "submitted" if finalize else "draft_saved"


class RunBook:
    """The bookkeeping of one run, whatever schedules its tasks.

    It owns the ledger handle, the outcomes and the listeners: it settles writes left in
    doubt, streams the tasks to do, and records each task's state changes exactly as the
    local run does (the Ray driver of :mod:`autolabel.scale` records through it too, so the
    ledger reads the same). Thread-safe: stage workers record concurrently.
    """

    def __init__(
        self,
        project: Project,
        key: ModelKey,
        options: RunOptions,
        ledger: Ledger,
        stop: threading.Event | None,
        on_stage: StageListener | None,
        on_task: OutcomeListener | None,
    ) -> None:
        self.project = project
        self.key = key
        self.options = options
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self.on_stage = on_stage
        self.on_task = on_task
        self.outcomes: list[TaskOutcome] = []
        self.already_done = 0
        self.resolved = 0
        self._fed = 0
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
            **extra,
        )

    @property
    def elapsed_s(self) -> float:
        """Seconds since :meth:`begin`."""
        return time.perf_counter() - self._began

    def emit(self, task_id: str, stage: str) -> None:
        """Tell the stage listener that ``task_id`` was queued or finished ``stage``."""
        if self.on_stage is not None:
            self.on_stage(task_id, stage)

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
            limit=None,
            on_skip=self._skip_unselected,
        ):
            if task.task_id in done:
                self.already_done += 1
                continue
            if options.limit is not None and self._fed >= options.limit:
                return
            self._fed += 1
            self.emit(task.task_id, "queued")
            yield task

    def _skip_unselected(self, task_id: str, name: str, reason: str) -> None:
        self.emit(task_id, "queued")
        self.finish(_stub(task_id, name), None, "skipped", reason)

    def settle_in_doubt(self) -> int:
        """Record the writes a killed run sent but did not confirm, if RedBrick has them."""
        if self.options.mode == "dry-run":
            return 0
        for event in self.ledger.in_doubt_writes(self.key):
            if event.mode != self.options.mode:
                continue
            before = LabelsMarker(
                event.detail.get("labels_before_by"), event.detail.get("labels_before_at")
            )
            stage = str(event.detail.get("stage") or self.options.stage)
            if self.write_landed(event.task_id, before, stage=stage):
                self.handle.record(
                    event.task_id,
                    TaskState.SUBMITTED if event.mode == "final" else TaskState.DRAFT_SAVED,
                    task_name=event.task_name,
                    detail={"resolved": "the write of an interrupted run had landed"},
                )
                self.resolved += 1
        return self.resolved

    def write_landed(self, task_id: str, before: LabelsMarker, *, stage: str | None = None) -> bool:
        """Re-read ``task_id``: did this key's write (made after ``before``) land?"""
        task = self.project.get_task(task_id)
        return write_landed(
            task,
            user_id=self.project.current_user_id,
            stage_name=stage or self.options.stage,
            finalize=self.options.mode == "final",
            before=before,
        )

    # -- state changes -------------------------------------------------------------------

    def fetched(
        self, task: Task, fresh: Task, input_checksum: str, series: int, seconds: float
    ) -> TaskOutcome:
        """Record ``fetched`` (``fresh`` is the task as re-read); return the task's outcome,
        started with the fetch time."""
        self.handle.record(
            task.task_id,
            TaskState.FETCHED,
            task_name=fresh.name,
            input_checksum=input_checksum,
            detail={"seconds": seconds, "series": series},
        )
        return TaskOutcome(task.task_id, fresh.name, "fetched", seconds={"fetch": seconds})

    def predicted(self, task: Task, outcome: TaskOutcome, seconds: float) -> None:
        """Record ``predicted`` with the inference time."""
        outcome.seconds["infer"] = seconds
        self.handle.record(
            task.task_id, TaskState.PREDICTED, task_name=task.name, detail={"seconds": seconds}
        )

    def converted(self, task: Task, outcome: TaskOutcome, seconds: float) -> None:
        """Record ``converted`` with the conversion time and predicted volumes."""
        outcome.seconds["convert"] = seconds
        self.handle.record(
            task.task_id,
            TaskState.CONVERTED,
            task_name=task.name,
            detail={"seconds": seconds, "volumes_ml": outcome.volumes_ml},
        )

    def intent(self, task: Task, before: LabelsMarker) -> TaskEvent:
        """Record (and commit) ``writing``: the claim that must precede the write."""
        return self.handle.record(
            task.task_id,
            TaskState.WRITING,
            task_name=task.name,
            detail={
                "stage": self.options.stage,
                "labels_before_by": before.created_by,
                "labels_before_at": before.created_at,
            },
        )

    def failed(
        self, task: Task, outcome: TaskOutcome | None, stage: str, exc: BaseException
    ) -> TaskOutcome:
        """Per-task failures become data (the outcome is returned); run-fatal errors are
        re-raised to stop the run."""
        if isinstance(exc, TaskSkipped):
            return self.finish(task, outcome, "skipped", exc.reason)
        if isinstance(exc, AuthError | LedgerError | ConfigError):
            raise exc
        reason = str(exc) if isinstance(exc, AutolabelError) else f"{type(exc).__name__}: {exc}"
        return self.finish(task, outcome, "failed", f"{stage}: {reason}", error=exc)

    def finish(
        self,
        task: Task,
        outcome: TaskOutcome | None,
        status: str,
        reason: str,
        *,
        error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> TaskOutcome:
        """Record the task's final state and tell the outcome listener."""
        outcome = outcome or TaskOutcome(task.task_id, task.name, status)
        outcome.status = status
        outcome.reason = reason
        if error is not None:
            outcome.error_type = type(error).__name__
        record: dict[str, Any] = {"seconds": sum(outcome.seconds.values())}
        if reason:
            record["reason"] = reason
        if outcome.volumes_ml:
            record["volumes_ml"] = outcome.volumes_ml
        if outcome.files:
            record["files"] = outcome.files
        if outcome.seconds:
            record["stage_seconds"] = outcome.seconds
        record.update(detail or {})
        self.handle.record(
            task.task_id,
            TaskState(status),
            task_name=task.name,
            detail=record,
            error=error,
        )
        with self._lock:
            self.outcomes.append(outcome)
        if self.on_task is not None:
            self.on_task(outcome)
        return outcome


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
            book.settle_in_doubt()
            engine: StageEngine[_Job] = StageEngine(
                [
                    Stage("fetch", self._fetch, options.fetch_workers),
                    Stage("infer", self._infer, 1),
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
        job.fetched = self.steps.fetch(task, self.downloads / _safe_name(task.task_id))
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
            task.task_id, entries, marker, record_intent=lambda: book.intent(task, marker)
        )
        outcome.seconds["write"] = time.perf_counter() - began
        book.emit(task.task_id, "write")
        book.finish(task, outcome, status, "")
        return True


def _with_retries(fetch: Callable[[], FetchedTask], attempts: int = 3) -> FetchedTask:
    """Fetch again after a transient failure (the client already retried each request; a
    fresh try also presigns the items again)."""
    for attempt in range(1, attempts + 1):
        try:
            return fetch()
        except PlatformError as exc:
            transient = isinstance(exc, TransportError) or exc.operation.startswith("storage")
            if not transient or attempt == attempts:
                raise
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _volumes_ml(
    label_map: npt.NDArray[np.integer], volume: Volume, segment_map: convert.SegmentMap
) -> dict[str, float]:
    """Predicted millilitres per taxonomy category (model classes mapped as written)."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    counts = np.bincount(label_map.ravel())
    out: dict[str, float] = {}
    for label_id, value in segment_map.values.items():
        if value and label_id < counts.size and counts[label_id]:
            category = segment_map.categories[value].name
            out[category] = out.get(category, 0.0) + float(counts[label_id]) * voxel_ml
    return out


def _write_json(path: Path, payload: Any) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temp, path)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "task"


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
    if options.mapping is not None:
        out["mapping"] = dict(options.mapping)
    return out

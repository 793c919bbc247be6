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
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
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
from autolabel.inference.spec import SegmentationModel
from autolabel.ledger import Ledger, ModelKey, Run, TaskState, ledger_path
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
    ``files`` the local results (label files, payload, preview).
    """

    task_id: str
    task_name: str
    status: str
    reason: str = ""
    error_type: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": self.status,
            "reason": self.reason,
            "error_type": self.error_type,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
            "files": dict(self.files),
        }


@dataclass
class RunSummary:
    """What a run did: one :class:`TaskOutcome` per task it touched, and stage timings."""

    run_id: str
    mode: str
    stage: str
    model: ModelKey
    outcomes: list[TaskOutcome]
    stages: EngineStats | None
    wall_s: float
    resolved: int = 0
    already_done: int = 0

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
        return {
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


def model_key(model: SegmentationModel) -> ModelKey:
    """The ledger identity of a loaded model."""
    spec = model.spec
    return ModelKey(spec.name, spec.version, spec.weights_sha256)


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
    own_ledger = ledger is None
    book = ledger if ledger is not None else Ledger(ledger_path(options.work_dir))
    try:
        return _Runner(project, model, options, book, stop, on_stage, on_task).go(command)
    finally:
        if own_ledger:
            book.close()


class _Runner:
    """One run's state; see :func:`run`."""

    def __init__(
        self,
        project: Project,
        model: SegmentationModel,
        options: RunOptions,
        ledger: Ledger,
        stop: threading.Event | None,
        on_stage: StageListener | None,
        on_task: OutcomeListener | None,
    ) -> None:
        self.project = project
        self.model = model
        self.options = options
        self.ledger = ledger
        self.stop = stop or threading.Event()
        self.on_stage = on_stage
        self.on_task = on_task
        self.key = model_key(model)
        self.outcomes: list[TaskOutcome] = []
        self._lock = threading.Lock()
        self.segment_map = convert.build_segment_map(
            dict(model.spec.labels),
            project.taxonomy,
            _default_mapping(model, options.mapping),
            allow_unmapped=options.allow_unmapped,
        )
        self.downloads = options.work_dir / "downloads"
        self.provenance = {"Model": f"{self.key.name} {self.key.version}"}

    # -- the run ---------------------------------------------------------------------------

    def go(self, command: tuple[str, ...]) -> RunSummary:
        options = self.options
        begun = time.perf_counter()
        handle = self.ledger.start_run(
            mode=options.mode,
            command=command,
            options=_loggable(options),
            model=self.key,
        )
        status = "failed"
        try:
            resolved = self._settle_in_doubt(handle)
            done = set() if options.force else self._done_ids()
            already = 0

            def jobs() -> Any:
                nonlocal already
                for task in select_tasks(
                    self.project,
                    options.stage,
                    task_ids=options.task_ids,
                    name=options.name,
                    limit=None,
                    on_skip=lambda tid, name, why: self._skip_unselected(handle, tid, name, why),
                ):
                    if task.task_id in done:
                        already += 1
                        continue
                    if options.limit is not None and self._fed >= options.limit:
                        return
                    self._fed += 1
                    self._emit(task.task_id, "queued")
                    yield _Job(task)

            self._fed = 0
            engine: StageEngine[_Job] = StageEngine(
                [
                    Stage("fetch", lambda job: self._fetch(handle, job), options.fetch_workers),
                    Stage("infer", lambda job: self._infer(handle, job), 1),
                    Stage("write", lambda job: self._write(handle, job), options.write_workers),
                ],
                on_error=lambda job, stage, exc: self._failed(handle, job, stage, exc),
                queue_depth=options.queue_depth,
                stop=self.stop,
            )
            stats = engine.run(jobs())
            status = "interrupted" if self.stop.is_set() else "finished"
        finally:
            handle.finish(status)
        return RunSummary(
            run_id=handle.run_id,
            mode=options.mode,
            stage=options.stage,
            model=self.key,
            outcomes=self.outcomes,
            stages=stats,
            wall_s=time.perf_counter() - begun,
            resolved=resolved,
            already_done=already,
        )

    def _emit(self, task_id: str, stage: str) -> None:
        if self.on_stage is not None:
            self.on_stage(task_id, stage)

    def _skip_unselected(self, handle: Run, task_id: str, name: str, reason: str) -> None:
        self._emit(task_id, "queued")
        self._finish(handle, _Job(_stub(task_id, name)), "skipped", reason)

    def _done_ids(self) -> set[str]:
        return self.ledger.done_task_ids(self.key, self.options.mode)

    def _settle_in_doubt(self, handle: Run) -> int:
        """Record the writes a killed run sent but did not confirm, if RedBrick has them."""
        if self.options.mode == "dry-run":
            return 0
        resolved = 0
        user = self.project.current_user_id
        for event in self.ledger.in_doubt_writes(self.key):
            if event.mode != self.options.mode:
                continue
            before = LabelsMarker(
                event.detail.get("labels_before_by"), event.detail.get("labels_before_at")
            )
            task = self.project.get_task(event.task_id)
            finalize = event.mode == "final"
            stage = str(event.detail.get("stage") or self.options.stage)
            if write_landed(task, user_id=user, stage_name=stage, finalize=finalize, before=before):
                handle.record(
                    event.task_id,
                    TaskState.SUBMITTED if finalize else TaskState.DRAFT_SAVED,
                    task_name=event.task_name,
                    detail={"resolved": "the write of an interrupted run had landed"},
                )
                resolved += 1
        return resolved

    # -- stages ------------------------------------------------------------------------------

    def _fetch(self, handle: Run, job: _Job) -> bool:
        began = time.perf_counter()
        task = job.task
        folder = self.downloads / _safe_name(task.task_id)
        job.fetched = _with_retries(
            lambda: fetch_task(self.project, task, self.options.stage, folder)
        )
        job.task = job.fetched.task
        seconds = time.perf_counter() - began
        job.outcome = TaskOutcome(
            task.task_id, job.task.name, "fetched", seconds={"fetch": seconds}
        )
        handle.record(
            task.task_id,
            TaskState.FETCHED,
            task_name=job.task.name,
            input_checksum=job.fetched.input_checksum,
            detail={"seconds": seconds, "series": len(job.fetched.series)},
        )
        self._emit(task.task_id, "fetch")
        return True

    def _infer(self, handle: Run, job: _Job) -> bool:
        assert job.fetched is not None and job.outcome is not None
        began = time.perf_counter()
        job.label_maps = [self.model.predict(series.volume) for series in job.fetched.series]
        seconds = time.perf_counter() - began
        job.outcome.seconds["infer"] = seconds
        handle.record(
            job.task.task_id,
            TaskState.PREDICTED,
            task_name=job.task.name,
            detail={"seconds": seconds},
        )
        self._emit(job.task.task_id, "infer")
        return True

    def _write(self, handle: Run, job: _Job) -> bool:
        assert job.fetched is not None and job.outcome is not None
        options = self.options
        task = job.task
        began = time.perf_counter()
        folder = options.results_dir / _safe_name(task.name or task.task_id)
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        volumes: dict[str, float] = {}
        for series, label_map in zip(job.fetched.series, job.label_maps, strict=True):
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
            job.outcome.files[f"labels-{series.index}"] = str(path)
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
                job.outcome.files[f"preview-{series.index}"] = str(preview)
        job.outcome.volumes_ml = volumes
        payload = {"taskId": task.task_id, "series": entries}
        payload_path = folder / "series.json"
        _write_json(payload_path, payload)
        job.outcome.files["payload"] = str(payload_path)
        job.label_maps = []  # free memory before the network wait
        convert_s = time.perf_counter() - began
        job.outcome.seconds["convert"] = convert_s
        handle.record(
            task.task_id,
            TaskState.CONVERTED,
            task_name=task.name,
            detail={"seconds": convert_s, "volumes_ml": volumes},
        )
        if not entries:
            self._emit(task.task_id, "write")
            self._finish(
                handle,
                job,
                "skipped",
                "the model found nothing in this task (empty prediction; use --empty submit "
                "to write it anyway)",
            )
            return False
        if options.mode == "dry-run":
            self._emit(task.task_id, "write")
            self._finish(handle, job, "dry_run", "")
            return True
        finalize = options.mode == "final"
        marker = job.fetched.marker
        began = time.perf_counter()
        write_task(
            self.project,
            task.task_id,
            options.stage,
            entries,
            finalize=finalize,
            before=marker,
            provenance=self.provenance,
            record_intent=lambda: handle.record(
                task.task_id,
                TaskState.WRITING,
                task_name=task.name,
                detail={
                    "stage": options.stage,
                    "labels_before_by": marker.created_by,
                    "labels_before_at": marker.created_at,
                },
            ),
        )
        job.outcome.seconds["write"] = time.perf_counter() - began
        self._emit(task.task_id, "write")
        self._finish(handle, job, "submitted" if finalize else "draft_saved", "")
        return True

    # -- endings -----------------------------------------------------------------------------

    def _failed(self, handle: Run, job: _Job, stage: str, exc: BaseException) -> None:
        """Per-task failures become data; run-fatal errors are re-raised to stop the run."""
        if isinstance(exc, TaskSkipped):
            self._finish(handle, job, "skipped", exc.reason)
            return
        if isinstance(exc, AuthError | LedgerError | ConfigError):
            raise exc
        reason = str(exc) if isinstance(exc, AutolabelError) else f"{type(exc).__name__}: {exc}"
        self._finish(handle, job, "failed", f"{stage}: {reason}", error=exc)

    def _finish(
        self,
        handle: Run,
        job: _Job,
        status: str,
        reason: str,
        *,
        error: BaseException | None = None,
    ) -> None:
        task = job.task
        outcome = job.outcome or TaskOutcome(task.task_id, task.name, status)
        outcome.status = status
        outcome.reason = reason
        if error is not None:
            outcome.error_type = type(error).__name__
        detail: dict[str, Any] = {"seconds": sum(outcome.seconds.values())}
        if reason:
            detail["reason"] = reason
        if outcome.volumes_ml:
            detail["volumes_ml"] = outcome.volumes_ml
        if outcome.files:
            detail["files"] = outcome.files
        if outcome.seconds:
            detail["stage_seconds"] = outcome.seconds
        handle.record(
            task.task_id,
            TaskState(status),
            task_name=task.name,
            detail=detail,
            error=error,
        )
        with self._lock:
            self.outcomes.append(outcome)
        if self.on_task is not None:
            self.on_task(outcome)


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


def _default_mapping(
    model: SegmentationModel, overrides: Mapping[str | int, convert.Target] | None
) -> dict[str | int, convert.Target]:
    """The card's label → category mapping, with the user's mapping file on top."""
    spec = model.spec
    mapping: dict[str | int, convert.Target] = {
        spec.labels[i]: spec.category_of(i) for i in spec.labels
    }
    mapping.update(overrides or {})
    return mapping


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

"""What a run is asked to do and what it did: :class:`RunOptions`, :class:`TaskOutcome`,
:class:`RunSummary` (and :class:`WorkerStats` for scaled-out runs), plus the ledger identity
of a model. Plain values, shared by the local run, the Ray run, the CLI and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel import convert
from autolabel.errors import ConfigError
from autolabel.imaging.checks import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS
from autolabel.inference.spec import ModelSpec, SegmentationModel
from autolabel.ledger import ModelKey
from autolabel.pipeline.engine import EngineStats

#: Modes of a run: save drafts, submit, or write nothing to RedBrick.
MODES = ("draft", "final", "dry-run")


#: Why ``empty = "flag"`` is refused: it only wrote series ``metaData``, which no RedBrick
#: user sees (the viewer shows labels, comments and classifications).
EMPTY_FLAG_REMOVED = (
    'empty = "flag" was removed: RedBrick shows that note to nobody. Use "submit" to save '
    'empty labels a person reviews, or "skip" (the default) and find the tasks with '
    "`autolabel status` (skipped: the model found nothing)"
)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run does (see :func:`autolabel.pipeline.run`).

    ``mode`` is ``draft`` (the default: save drafts), ``final`` (submit) or ``dry-run``
    (write nothing to RedBrick; keep label files, payloads and previews in ``out_dir``).
    ``task_ids`` / ``name`` pick tasks instead of all assigned ones; ``limit`` caps them.
    ``mapping`` maps model label names to taxonomy categories (``None`` drops a class) on
    top of the model card's default mapping. ``empty`` is the policy for a task whose
    prediction is empty: ``skip`` it or ``submit`` it empty (see :data:`EMPTY_FLAG_REMOVED`).
    ``work_dir`` holds the ledger and temporary downloads; ``out_dir`` (default
    ``work_dir/results``) the per-task results, one folder per task id. ``model_timeout_s`` bounds each predict
    call (None: the card's ``[runtime] timeout_s``, else 900 s; see
    :mod:`autolabel.inference.guard`); ``max_voxels`` / ``max_image_bytes`` bound each
    series before it is decoded (:class:`autolabel.imaging.ImageLimits`).

    ``lock_wait_s`` is how long to wait for another run holding the work folder's lock
    (:mod:`autolabel.pipeline.lock`): 0 (default) not at all, ``None`` as long as it takes.
    ``settle_window_s`` is how long a write whose reply was lost may still land on
    RedBrick (:func:`autolabel.pipeline.submit.settle_window`); ``None`` derives it from the
    client's read timeout.
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
    model_timeout_s: float | None = None
    max_voxels: int = DEFAULT_MAX_VOXELS
    max_image_bytes: int = DEFAULT_MAX_BYTES
    lock_wait_s: float | None = 0.0
    settle_window_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if str(self.empty) == "flag":  # an old settings file or script
            raise ConfigError(EMPTY_FLAG_REMOVED)
        if self.empty not in ("skip", "submit"):
            raise ConfigError(f"empty must be skip or submit, got {self.empty!r}")
        for name in ("fetch_workers", "write_workers", "queue_depth", "max_voxels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_image_bytes < 1:
            raise ConfigError(f"max_image_bytes must be positive, got {self.max_image_bytes}")
        if self.min_component_voxels < 0:
            raise ConfigError(
                f"min_component_voxels must be 0 or more, got {self.min_component_voxels}"
            )
        if self.model_timeout_s is not None and not self.model_timeout_s > 0:
            raise ConfigError(
                f"model_timeout_s must be a positive number of seconds, got {self.model_timeout_s}"
            )
        for name in ("lock_wait_s", "settle_window_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")

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
    #: Things about the project the user should know about this run (one line each).
    notes: list[str] = field(default_factory=list)

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
        out["notes"] = list(self.notes)
        return out


#: Called after each stage of each task: ``(task_id, stage name)``.
StageListener = Callable[[str, str], None]
#: Called when a task ends: its outcome.
OutcomeListener = Callable[[TaskOutcome], None]


def model_key(model: SegmentationModel) -> ModelKey:
    """The ledger identity of a loaded model."""
    return spec_key(model.spec)


def spec_key(spec: ModelSpec) -> ModelKey:
    """The ledger identity of a model spec (name, version, weights hash)."""
    return ModelKey(spec.name, spec.version, spec.weights_sha256)

"""What a run did: :class:`TaskOutcome`, :class:`RunSummary` (and :class:`WorkerStats`
for scaled-out runs), the :class:`RunListener` told as it goes, and the ledger identity of a
model. Plain values, shared by the local run, the Ray run, the CLI and the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from autolabel.inference.spec import ModelSpec, SegmentationModel
from autolabel.ledger import ModelKey
from autolabel.pipeline.engine import EngineStats
from autolabel.pipeline.routing import Route


@dataclass
class TaskOutcome:
    """How one task ended in a run.

    ``status`` is a ledger state value: ``draft_saved``, ``submitted``, ``dry_run``,
    ``skipped`` or ``failed``. ``reason`` explains a skip or failure; ``seconds`` holds the
    duration of each stage; ``volumes_ml`` the predicted volume per taxonomy category;
    ``files`` the local results (label files, payload, preview); ``worker`` the Ray actor
    that did the task (empty in a local run); ``phase`` the phase a failed task failed in
    (``fetch``, ``infer``, ``write``, or the Ray call; empty otherwise).

    Confidence routing (:mod:`autolabel.pipeline.routing`): ``confidence`` per category
    (None: the model gives no probabilities), ``route`` (``finalize``, ``draft``, or ``""``
    when the mode alone decided) and ``route_reason``, the ``dropped`` categories and the
    ``priority`` set on a draft (None: left alone).
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
    phase: str = ""
    confidence: dict[str, dict[str, Any]] | None = None
    route: str = ""
    route_reason: str = ""
    dropped: list[str] = field(default_factory=list)
    priority: float | None = None

    def routed(
        self,
        route: Route,
        confidence: dict[str, dict[str, Any]] | None,
        dropped: list[str],
        priority: float | None,
    ) -> None:
        """Keep the route :class:`~autolabel.pipeline.flow.TaskFlow` decided."""
        self.route, self.route_reason = route.name, route.reason
        self.confidence, self.dropped, self.priority = confidence, list(dropped), priority

    def routing_detail(self) -> dict[str, Any]:
        """What the ledger records of the route: ``confidence`` (null: no probabilities),
        and the route, its reason, dropped categories and priority when there are any."""
        out: dict[str, Any] = {"confidence": self.confidence}
        for key in ("route", "route_reason", "dropped"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.priority is not None:
            out["priority"] = self.priority
        return out

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
            "confidence": self.confidence,
            "route": self.route,
            "route_reason": self.route_reason,
            "dropped": list(self.dropped),
            "priority": self.priority,
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
    #: The run was stopped (Ctrl-C, SIGTERM, ``stop``) before it ran out of tasks.
    interrupted: bool = False

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
    def routes(self) -> dict[str, int]:
        """How many tasks took each route (``finalize``, ``draft``) and how many had a
        category dropped (``dropped``, a task skipped because every category was dropped
        included); empty when the run did not route by confidence."""
        counts: dict[str, int] = {}
        for o in self.done:
            if o.route:
                counts[o.route] = counts.get(o.route, 0) + 1
        for o in [*self.done, *self.skipped]:
            if o.dropped:
                counts["dropped"] = counts.get("dropped", 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        """1 when a task failed; else 130 when the run was stopped before it ran out of
        tasks (the rest are for the next run: "everything done" would be untrue); else 0."""
        if self.failed:
            return 1
        return 130 if self.interrupted else 0

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
            "routes": self.routes,
            "interrupted": self.interrupted,
            "wall_s": round(self.wall_s, 3),
            "stages": stages,
            "tasks": [o.to_dict() for o in self.outcomes],
        }
        if self.workers:
            out["workers"] = [w.to_dict() for w in self.workers]
        out["notes"] = list(self.notes)
        return out


class RunListener(Protocol):
    """Told what a run does as it goes (the progress bars of the command line are one)."""

    def on_phase(self, task_id: str, phase: str) -> None:
        """``task_id`` was ``queued`` or finished ``phase`` (``fetch``, ``infer``, ``write``)."""

    def on_task(self, outcome: TaskOutcome) -> None:
        """A task ended with ``outcome``."""


def model_key(model: SegmentationModel) -> ModelKey:
    """The ledger identity of a loaded model."""
    return spec_key(model.spec)


def spec_key(spec: ModelSpec) -> ModelKey:
    """The ledger identity of a model spec (name, version, weights hash)."""
    return ModelKey(spec.name, spec.version, spec.weights_sha256)

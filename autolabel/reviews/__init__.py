"""Programmatic review and Ground Truth audits: decisions per task, with the model as a
second reader.

* :func:`review_tasks` accepts or rejects the tasks queued for the API key in a review
  stage: as told (``accept`` / ``reject``), by agreement with the model (``auto``: Dice
  per category at or above ``min_dice`` accepts, otherwise a rejection whose comment lists
  the categories and their Dice), or by accepting with the model's labels (``correct``).
* :func:`audit_ground_truth` scores Ground Truth tasks against the model and sends those
  it disagrees with (any category below ``max_dice``) back to Label
  (``move_tasks_to_start``); with ``dry_run`` it only lists them.
* :func:`send_back` sends given Ground Truth tasks back to Label.

A failing task is reported with its reason and the others go on, as in a run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel import convert, imaging
from autolabel.errors import ConfigError, NotFoundError, TaskSkipped, TransportError, classify
from autolabel.inference.spec import SegmentationModel
from autolabel.pipeline.fetch import load_task_series, select_tasks, writable_problem
from autolabel.pipeline.steps import segment_map_for
from autolabel.pipeline.submit import default_settle_window, hold_task, wait_until
from autolabel.redbrick import Project, Task
from autolabel.reviews import compare

DECISIONS = ("accept", "reject", "auto", "correct")


@dataclass
class TaskDecision:
    """What happened to one task: ``status`` is ``accepted``, ``rejected``, ``corrected``,
    ``sent_back``, ``kept`` (an audit found it fine), ``listed`` (an audit dry run),
    ``skipped`` or ``failed``; ``dice`` the model's agreement per category, when scored."""

    task_id: str
    task_name: str
    status: str
    reason: str = ""
    comment: str = ""
    dice: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": self.status,
            "reason": self.reason,
            "comment": self.comment,
            "dice": dict(self.dice),
        }


@dataclass
class ReviewSummary:
    """The decisions of a review or audit pass."""

    stage: str
    decisions: list[TaskDecision]

    def count(self, status: str) -> int:
        """How many tasks ended with ``status``."""
        return sum(1 for d in self.decisions if d.status == status)

    @property
    def exit_code(self) -> int:
        """0 when no task failed, 1 otherwise."""
        return 1 if self.count("failed") else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        statuses = sorted({d.status for d in self.decisions})
        return {
            "stage": self.stage,
            "counts": {s: self.count(s) for s in statuses},
            "tasks": [d.to_dict() for d in self.decisions],
        }


class _Scorer:
    """Scores a task's stored labels against the model, per taxonomy category."""

    def __init__(self, project: Project, model: SegmentationModel, work_dir: Path) -> None:
        self.project = project
        self.model = model
        self.segment_map = segment_map_for(model.spec, project.taxonomy)
        self.categories = [c.name for c in self.segment_map.categories.values()]
        self.work_dir = work_dir

    def score(self, task: Task) -> dict[str, float]:
        """Dice per category (``series/category`` for tasks of several series; where two
        series share a name, ``index:series/category``, so no series' scores hide another's)."""
        folder = Path(tempfile.mkdtemp(prefix="score-", dir=self._scratch()))
        try:
            series, _ = load_task_series(self.project, task, folder / "items")
            files = self.project.download_labels(task, folder / "labels")
            stored = self.project.stored_labels(task)
            scores: dict[str, float] = {}
            names = [s.name or str(s.index) for s in series]
            if len(set(names)) < len(names):  # series of one name: their position parts them
                names = [f"{s.index}:{name}" for s, name in zip(series, names, strict=True)]
            for s, name in zip(series, names, strict=True):
                predicted = compare.from_prediction(self.model.predict(s.volume), self.segment_map)
                if s.index in files:
                    array, _ = imaging.read_label_nifti(files[s.index])
                else:
                    array = predicted.array * 0
                reference = compare.from_labels(array, stored, s.index)
                for category, value in compare.dice_by_category(
                    predicted, reference, self.categories
                ).items():
                    key = category if len(series) == 1 else f"{name}/{category}"
                    scores[key] = value
            return scores
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def prelabel(self, task: Task, folder: Path) -> list[dict[str, Any]]:
        """The model's series entries for ``task``, one per series in the task's order (a
        series the model finds nothing in gets an entry without labels, see
        :func:`autolabel.convert.positional`); label files are written under ``folder``."""
        series, _ = load_task_series(self.project, task, folder / "items")
        names = [s.name or f"{task.name}-{s.index}" for s in series]
        found = [
            convert.to_series(
                self.model.predict(s.volume),
                s.volume,
                self.segment_map,
                name=name,
                path=folder / f"series-{s.index}-labels.nii.gz",
            )
            for s, name in zip(series, names, strict=True)
        ]
        return convert.positional(found, names)

    def _scratch(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir


def review_tasks(
    project: Project,
    model: SegmentationModel | None,
    stage_name: str = "Review_1",
    *,
    decision: str = "auto",
    min_dice: float = 0.8,
    comment: str | None = None,
    task_ids: Sequence[str] = (),
    work_dir: Path = Path("autolabel-work"),
) -> ReviewSummary:
    """Review the tasks queued for the key in ``stage_name`` (or ``task_ids``).

    ``decision`` is ``accept``, ``reject`` (with ``comment``), ``auto`` (needs ``model``;
    accept when every compared category has Dice ≥ ``min_dice``, else reject with the
    scores in the comment) or ``correct`` (needs ``model``; accept with its labels).
    Raises :class:`~autolabel.errors.ConfigError` for a bad decision or a missing model and
    :class:`~autolabel.errors.AuthError` when RedBrick refuses the key; other errors are
    per task.
    """
    if decision not in DECISIONS:
        raise ConfigError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    if decision in ("auto", "correct") and model is None:
        raise ConfigError(f"review {decision!r} needs a model (--model)")
    if not 0.0 <= min_dice <= 1.0:
        raise ConfigError(f"--min-dice must be between 0 and 1, got {min_dice}")
    stage = next((s for s in project.stages if s.stage_name == stage_name), None)
    if stage is None or not stage.is_review:
        names = ", ".join(s.stage_name for s in project.stages if s.is_review) or "none"
        raise ConfigError(f"{stage_name!r} is not a review stage of this project (review: {names})")
    scorer = _Scorer(project, model, work_dir) if model is not None else None
    user = project.current_user_id
    decisions: list[TaskDecision] = []

    def left_out(task_id: str, name: str, reason: str) -> None:
        decisions.append(TaskDecision(task_id, name, "skipped", reason))

    # The run's own selection and guard: queued in the stage for the key, or as asked.
    for listed in select_tasks(project, stage_name, task_ids=task_ids, on_skip=left_out):
        # A listing carries no labels: read the task whole before judging it.
        task = listed if listed.items_loaded else project.get_task(listed.task_id)
        problem = writable_problem(task, stage_name, user)
        if problem is not None:
            left_out(task.task_id, task.name, problem)
            continue
        decisions.append(
            _guard(task, lambda t: _review_one(project, scorer, t, decision, min_dice, comment))
        )
    return ReviewSummary(stage_name, decisions)


def _decide(project: Project, task: Task, **decision: Any) -> None:
    """Send ``decision`` (:meth:`Project.review_task`) on ``task``, in its review stage,
    under the task's machine-wide write lock (:func:`autolabel.pipeline.submit.hold_task`).

    Under the lock the task is re-read first: if it has left the stage (another review on
    this machine decided it meanwhile) :class:`TaskSkipped` says so and nothing is sent.
    A lost reply (timeout, reset, a gateway's 5xx) leaves the decision in doubt: it may
    land after the client gave up. The task is then re-read with backoff
    (:func:`autolabel.pipeline.submit.wait_until`, over the settle window) until it has left
    the stage -- the decision landed -- and the error is raised only if it has not.
    """
    stage = task.stage_name
    window = default_settle_window(project)
    with hold_task(project, task.task_id, window):
        if project.get_task(task.task_id).stage_name != stage:
            raise TaskSkipped(f"decided meanwhile: the task has left {stage}")
        try:
            project.review_task(task.task_id, stage, **decision)
        except TransportError:
            landed, _ = wait_until(
                project,
                task.task_id,
                lambda now: now.stage_name != stage,
                deadline=time.time() + window,
            )
            if not landed:
                raise


def _review_one(
    project: Project,
    scorer: _Scorer | None,
    task: Task,
    decision: str,
    min_dice: float,
    comment: str | None,
) -> TaskDecision:
    if decision in ("accept", "reject"):
        accept = decision == "accept"
        _decide(project, task, accept=accept, comment=comment)
        return TaskDecision(
            task.task_id, task.name, "accepted" if accept else "rejected", comment=comment or ""
        )
    assert scorer is not None
    if decision == "correct":
        folder = Path(tempfile.mkdtemp(prefix="correct-", dir=scorer._scratch()))
        try:
            entries = scorer.prelabel(task, folder)
            _decide(project, task, accept=True, corrected_series=entries)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return TaskDecision(task.task_id, task.name, "corrected")
    scores = scorer.score(task)
    if not scores:
        return TaskDecision(
            task.task_id,
            task.name,
            "skipped",
            "neither the labels nor the model have any of the model's categories; "
            "review this task by hand",
        )
    low = {k: v for k, v in scores.items() if v < min_dice}
    if not low:
        _decide(project, task, accept=True, comment=comment)
        return TaskDecision(task.task_id, task.name, "accepted", dice=scores)
    text = f"autolabel: Dice below {min_dice:.2f} for {compare.describe(low)}"
    if comment:
        text = f"{comment} ({text})"
    _decide(project, task, accept=False, comment=text)
    return TaskDecision(task.task_id, task.name, "rejected", comment=text, dice=scores)


def audit_ground_truth(
    project: Project,
    model: SegmentationModel,
    *,
    max_dice: float = 0.7,
    dry_run: bool = False,
    task_ids: Sequence[str] = (),
    limit: int | None = None,
    work_dir: Path = Path("autolabel-work"),
) -> ReviewSummary:
    """Send back the Ground Truth tasks the model disagrees with (any category's Dice below
    ``max_dice``); with ``dry_run`` only list them. Tasks it agrees with are ``kept``."""
    if not 0.0 <= max_dice <= 1.0:
        raise ConfigError(f"--max-dice must be between 0 and 1, got {max_dice}")
    scorer = _Scorer(project, model, work_dir)
    decisions: list[TaskDecision] = []
    tasks: Iterable[Task] = (
        _tasks(project, project.output_stage_name, task_ids, decisions)
        if task_ids
        else _ground_truth(project)
    )
    for count, task in enumerate(tasks):
        if limit is not None and count >= limit:
            break

        def audit_one(task: Task) -> TaskDecision:
            full = task if task.items_loaded else project.get_task(task.task_id)
            if not full.is_ground_truth:
                return TaskDecision(
                    task.task_id, task.name, "skipped", f"not in Ground Truth ({full.stage_name})"
                )
            scores = scorer.score(full)
            low = {k: v for k, v in scores.items() if v < max_dice}
            if not low:
                return TaskDecision(task.task_id, task.name, "kept", dice=scores)
            reason = f"model disagrees: Dice below {max_dice:.2f} for {compare.describe(low)}"
            if dry_run:
                return TaskDecision(task.task_id, task.name, "listed", reason, dice=scores)
            project.move_task_to_start(task.task_id)
            return TaskDecision(task.task_id, task.name, "sent_back", reason, dice=scores)

        decisions.append(_guard(task, audit_one))
    return ReviewSummary(project.output_stage_name, decisions)


def send_back(project: Project, task_ids: Sequence[str]) -> ReviewSummary:
    """Send the given Ground Truth tasks back to the first Label stage."""
    decisions: list[TaskDecision] = []
    for task in _tasks(project, project.output_stage_name, task_ids, decisions):

        def move(task: Task) -> TaskDecision:
            if not task.is_ground_truth:
                return TaskDecision(
                    task.task_id,
                    task.name,
                    "skipped",
                    f"task is in {task.stage_name}, not Ground Truth: only Ground Truth tasks "
                    "can be sent back to Label",
                )
            project.move_task_to_start(task.task_id)
            return TaskDecision(task.task_id, task.name, "sent_back")

        decisions.append(_guard(task, move))
    return ReviewSummary(project.output_stage_name, decisions)


def _ground_truth(project: Project) -> Iterable[Task]:
    for raw in project.client.list_tasks(
        project.org_id, project.project_id, stage_name=project.output_stage_name, filters={}
    ):
        yield Task.from_wire(raw)


def _tasks(
    project: Project, stage_name: str, task_ids: Sequence[str], decisions: list[TaskDecision]
) -> Iterable[Task]:
    if not task_ids:
        yield from project.list_assigned_tasks(stage_name)
        return
    for task_id in dict.fromkeys(task_ids):
        try:
            yield project.get_task(task_id)
        except NotFoundError:
            decisions.append(TaskDecision(task_id, "", "skipped", "no such task in this project"))


def _guard(task: Task, work: Any) -> TaskDecision:
    """Run ``work(task)``; a per-task error becomes the decision
    :func:`autolabel.errors.classify` says (``skipped`` or ``failed``, with its reason)."""
    try:
        result: TaskDecision = work(task)
        return result
    except Exception as exc:
        status, reason = classify(exc)  # the run's rule; run-fatal errors are raised again
        if status == "failed":
            reason = f"{type(exc).__name__}: {exc}"
        return TaskDecision(task.task_id, task.name, status, reason)

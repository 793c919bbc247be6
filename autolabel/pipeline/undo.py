"""Undo: revert what a run (or a model version) wrote, where no person has touched it since.

:func:`undo` reads the ledger for the writes of the chosen runs (``--run``) or models
(``--model NAME@VERSION``), re-reads each task from RedBrick and decides:

* ``reverted`` (``would_revert`` in a dry run): the task is still queued in the run's stage
  for the key and its latest labels are still the ones the key saved (no one saved labels
  since: the labels marker the guard compares, and no other model's provenance stamp on
  them). What was there before is written back: the run only writes tasks without a
  person's labels (:func:`autolabel.pipeline.fetch.human_labels_problem`), so that is
  *no labels*: a draft saved with an empty ``series``, which the SDK sends as
  ``putManualLabelingTaskAndLabels(labelsData: "[]", labelsMap: [])``
  (redbrick/labeling/public.py ``put_tasks``, redbrick/utils/upload.py
  ``process_segmentation_upload``);
* ``kept``: a person saved labels since (or this key saved other labels: another model's
  stamp, or none where the taxonomy makes a run's labels carry one: a script), the task
  was handed to someone else, or the labels before the run were this key's own (an
  earlier autolabel write, of which autolabel keeps no copy: undo that run too, and both
  revert to no labels);
* ``needs_reviewer``: the write was submitted and the task has left the stage; ``todo``
  says what a reviewer must do to send it back (reject it in the review stage; from Ground
  Truth ``move_tasks_to_start``), after which the same undo reverts it;
* ``already_undone``: the ledger shows the revert (a second undo is a no-op).

Exactly once, as a run writes (:mod:`autolabel.pipeline.submit`): the intent ``undoing`` is
committed before the revert is sent, under the work folder's lock
(:mod:`autolabel.pipeline.lock`) and the task's machine-wide write lock
(:mod:`autolabel.pipeline.tasklock`), with the guard's last re-read just before the send; a
revert whose reply was lost is settled by re-reading (:func:`~autolabel.pipeline.submit.wait_until`)
before ``undone`` is recorded, and an undo killed in between settles it on its next start.
Errors go through :func:`autolabel.errors.classify`, as in a run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import ConfigError, TaskSkipped, classify
from autolabel.ledger import Ledger, ModelKey, Run, TaskEvent, TaskState, ledger_path
from autolabel.pipeline.fetch import (
    PROVENANCE_ATTRIBUTE,
    LabelsMarker,
    has_no_labels,
    model_stamps,
    provenance,
    stampable,
)
from autolabel.pipeline.lock import lock_work_folder
from autolabel.pipeline.submit import default_settle_window, settle, wait_until, write_task
from autolabel.records import UNDO_MODE
from autolabel.redbrick import Project, Task

#: Runs whose ``--run`` undo has nothing to revert, and why.
_NOT_WRITES = {"dry-run": "a dry run: it wrote nothing", UNDO_MODE: "an undo: run the model again"}
#: What a reverted task holds afterwards.
RESTORED = "no labels (a draft with an empty series, as before the run)"


@dataclass
class UndoItem:
    """One task of an undo: ``status`` is ``reverted`` / ``would_revert``, ``kept``,
    ``needs_reviewer``, ``already_undone`` or ``failed``; ``todo`` what a person must do."""

    task_id: str
    task_name: str
    status: str
    reason: str = ""
    todo: str = ""
    runs: tuple[str, ...] = ()
    model: str = ""
    restored: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**dataclasses.asdict(self), "runs": list(self.runs)}


@dataclass
class UndoSummary:
    """The outcome (or, with ``dry_run``, the plan) of one undo."""

    items: list[UndoItem]
    dry_run: bool
    run_id: str | None = None

    def count(self, status: str) -> int:
        """How many tasks have ``status``."""
        return sum(1 for item in self.items if item.status == status)

    @property
    def exit_code(self) -> int:
        """0 when no task failed, 1 otherwise."""
        return 1 if self.count("failed") else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        statuses = sorted({item.status for item in self.items})
        return {
            "dry_run": self.dry_run,
            "undo_run_id": self.run_id,
            "counts": {s: self.count(s) for s in statuses},
            "tasks": [item.to_dict() for item in self.items],
        }


@dataclass
class _Write:
    """A landed write of the ledger, with the marker its intent recorded."""

    event: TaskEvent
    stage: str
    before: LabelsMarker
    selected: bool


@dataclass
class _Chain:
    """A task's writes still standing (oldest first) and an undo left in doubt."""

    standing: list[_Write] = field(default_factory=list)
    undoing: list[TaskEvent] = field(default_factory=list)


def parse_model(text: str) -> tuple[str, str]:
    """``NAME@VERSION`` as ``(name, version)``; :class:`ConfigError` otherwise."""
    name, sep, version = text.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"--model {text!r}: give NAME@VERSION, e.g. ct-threshold@1.0")
    return name, version


def undo(
    project: Project,
    work_dir: Path,
    *,
    run_ids: Sequence[str] = (),
    models: Sequence[str] = (),
    dry_run: bool = False,
    command: Sequence[str] = (),
    settle_window_s: float | None = None,
) -> UndoSummary:
    """Undo the writes of ``run_ids`` and ``models`` (``NAME@VERSION``) recorded in the
    ledger of ``work_dir``; with ``dry_run`` only plan it (nothing is written anywhere).

    Raises :class:`ConfigError` for no selection, an unknown run or model, a missing
    ledger or a busy work folder; :class:`~autolabel.errors.AuthError` and
    :class:`~autolabel.errors.LedgerError` stop it; other errors fail their task only.
    """
    chosen = [parse_model(m) for m in models]
    if not run_ids and not chosen:
        raise ConfigError("give --run RUN_ID or --model NAME@VERSION (each repeatable)")
    if not ledger_path(work_dir).is_file():
        raise ConfigError(f"no ledger in {work_dir}: give the --work folder of the run to undo")
    with lock_work_folder(work_dir), Ledger(ledger_path(work_dir), create=False) as ledger:
        known = {r.run_id: r.mode for r in ledger.runs()}
        missing = [r for r in run_ids if r not in known]
        if missing:
            raise ConfigError(f"no run {missing[0]!r} in the ledger of {work_dir}")
        for run_id in (r for r in run_ids if known[r] in _NOT_WRITES):  # say so, record no undo
            raise ConfigError(f"run {run_id!r} was {_NOT_WRITES[known[run_id]]}; nothing to undo")
        writes = ledger.writes_of(run_ids, chosen)
        if chosen and not writes and not run_ids:
            raise ConfigError(f"the ledger of {work_dir} has no writes of {', '.join(models)}")
        window = default_settle_window(project) if settle_window_s is None else settle_window_s
        undoer = _Undoer(project, ledger, set(run_ids), set(chosen), dry_run, window)
        if not dry_run:
            options = {"runs": list(run_ids), "models": list(models)}
            undoer.handle = ledger.start_run(mode=UNDO_MODE, command=command, options=options)
        items = [undoer.task(task_id) for task_id in dict.fromkeys(e.task_id for e in writes)]
        if undoer.handle is not None:
            undoer.handle.finish("finished")
        return UndoSummary(items, dry_run, undoer.handle.run_id if undoer.handle else None)


class _Undoer:
    """Plans and carries out the undo of one task at a time."""

    def __init__(
        self,
        project: Project,
        ledger: Ledger,
        run_ids: set[str],
        models: set[tuple[str, str]],
        dry_run: bool,
        window: float,
    ) -> None:
        self.project = project
        self.ledger = ledger
        self.run_ids = run_ids
        self.models = models
        self.dry_run = dry_run
        self.window = window
        self.user = project.current_user_id
        self.handle: Run | None = None

    def _selected(self, event: TaskEvent) -> bool:
        model = (event.model.name, event.model.version)
        return event.run_id in self.run_ids or model in self.models

    def task(self, task_id: str) -> UndoItem:
        """Plan, and unless a dry run carry out, the undo of one task."""
        history = [e for e in self.ledger.history(task_id) if e.mode != "dry-run"]
        name = history[-1].task_name if history else ""
        try:
            chain = self._chain(history)
            return self._undo(task_id, name, chain)
        except Exception as exc:
            status, reason = classify(exc)  # run-fatal errors are raised again
            if status == "skipped":
                return UndoItem(task_id, name, "kept", reason)
            if self.handle is not None and history:
                self.handle.record(task_id, TaskState.FAILED, task_name=name,
                                   model=history[-1].model, error=exc)  # fmt: skip
            return UndoItem(task_id, name, "failed", f"{type(exc).__name__}: {exc}")

    # -- the ledger's view ---------------------------------------------------------------

    def _chain(self, history: list[TaskEvent]) -> _Chain:
        """The writes still standing on the task (settling any left in doubt) and an
        undo left in doubt, from its ledger history (all models)."""
        chain = _Chain()
        intents: dict[ModelKey, TaskEvent] = {}  # a model's latest intent (a settled
        latest: dict[ModelKey, TaskEvent] = {}  # write may be recorded by a later run)
        for event in history:
            latest[event.model] = event
            if event.state is TaskState.WRITING:
                intents[event.model] = event
            elif event.state in (TaskState.DRAFT_SAVED, TaskState.SUBMITTED):
                chain.standing.append(self._write(event, intents.get(event.model)))
            elif event.state is TaskState.UNDONE:
                gone = set(event.detail.get("undid") or ())
                chain.standing = [w for w in chain.standing if w.event.seq not in gone]
        for event in latest.values():
            if event.state is TaskState.WRITING and self._selected(event):
                landed = self._settle_write(event)
                if landed is not None:
                    chain.standing.append(self._write(landed, event))
            elif event.state is TaskState.UNDOING:
                chain.undoing.append(event)
        chain.standing.sort(key=lambda w: w.event.seq)
        return chain

    def _write(self, event: TaskEvent, intent: TaskEvent | None) -> _Write:
        detail = intent.detail if intent is not None else {}
        before = LabelsMarker(detail.get("labels_before_by"), detail.get("labels_before_at"))
        selected = self._selected(event) or (intent is not None and self._selected(intent))
        return _Write(event, str(detail.get("stage") or "Label"), before, selected)

    def _settle_write(self, intent: TaskEvent) -> TaskEvent | None:
        """A write of the run left in doubt: recorded as landed (under its own run) if
        RedBrick shows it, else None (nothing to undo)."""
        before = LabelsMarker(
            intent.detail.get("labels_before_by"), intent.detail.get("labels_before_at")
        )
        deadline = 0.0 if self.dry_run else intent.at + self.window
        finalize = bool(intent.detail.get("finalize", intent.mode == "final"))  # its route
        landed, _ = settle(
            self.project, intent.task_id, stage_name=str(intent.detail.get("stage") or "Label"),
            finalize=finalize, before=before, deadline=deadline,
        )  # fmt: skip
        if not landed:
            return None
        state = TaskState.SUBMITTED if finalize else TaskState.DRAFT_SAVED
        if self.dry_run:
            return intent
        return self.ledger.record(
            intent.run_id, intent.task_id, state, model=intent.model,
            task_name=intent.task_name, detail={"resolved": "settled by autolabel undo"},
        )  # fmt: skip

    # -- deciding and doing ----------------------------------------------------------------

    def _undo(self, task_id: str, name: str, chain: _Chain) -> UndoItem:
        if chain.undoing and self._settle_undo(chain.undoing):
            return UndoItem(task_id, name, "already_undone", "the revert of an earlier undo "
                            "had landed", restored=RESTORED)  # fmt: skip
        if not any(w.selected for w in chain.standing):
            return UndoItem(task_id, name, "already_undone",
                            "no write of it stands on the task (undone, or never landed)")  # fmt: skip
        undone = _popped(chain.standing)
        top = undone[-1]
        runs = tuple(dict.fromkeys(w.event.run_id for w in undone))
        item = UndoItem(task_id, name, "kept", runs=runs, model=str(top.event.model))
        if not top.selected:
            item.reason = (
                f"written again since by run {top.event.run_id} ({top.event.model}); undo "
                "that run first (--run), then this one"
            )
            return item
        lowest = undone[0]
        below = [w for w in chain.standing if w.event.seq < lowest.event.seq]
        if below or lowest.before.created_by == self.user:
            at = f"this API key at {lowest.before.created_at}, outside autolabel"
            earlier = f"run {below[-1].event.run_id} ({below[-1].event.model})" if below else at
            item.reason = (
                f"before this run the task had labels of {earlier}; autolabel keeps no copy "
                "of them, so undo cannot put them back. Undo that run as well (--run, both "
                "revert to no labels) or re-run its model on the task with --force"
            )
            return item
        task = self.project.get_task(task_id)
        labels = task.labels_of(self.user)
        if task.stage_name == top.stage and labels is not None and labels.created_by == self.user \
                and has_no_labels(labels):  # fmt: skip
            item.status, item.restored = "already_undone", RESTORED
            item.reason = "the key's latest labels on it hold nothing already"
            if not self.dry_run:
                self._revert(task, top.stage, undone, send=False)
            return item
        problem = self._problem(task, top)
        if problem is not None:
            item.reason, item.todo = problem
            item.status = "needs_reviewer" if item.todo else "kept"
            return item
        item.restored = RESTORED
        if self.dry_run:
            item.status = "would_revert"
            return item
        self._revert(task, top.stage, undone)
        item.status = "reverted"
        return item

    def _problem(self, task: Task, top: _Write) -> tuple[str, str] | None:
        """Why ``task`` cannot be reverted -- ``(reason, what a reviewer must do)`` -- or None."""
        stage = top.stage
        if task.stage_name != stage:
            return self._moved_on(task, stage)
        labels = task.labels_of(self.user)
        if labels is not None and labels.created_by != self.user:
            return (f"a person saved labels since the run ({labels.created_by} at "
                    f"{labels.created_at}); autolabel never overwrites a person's work", "")  # fmt: skip
        if labels is None:
            return "the task has no labels any more: nothing to revert", ""
        ours = provenance(top.event.model.name, top.event.model.version)[PROVENANCE_ATTRIBUTE]
        found = model_stamps(labels.labels)
        if found and ours not in found:
            return (f"this API key saved labels of {', '.join(sorted(found))} since the run; "
                    "they are kept (undo that run instead)", "")  # fmt: skip
        if not found and stampable(self.project, labels.labels):
            return ("this API key saved labels without autolabel's Model stamp since the run "
                    "(a script using the key?); they are kept: clear them in RedBrick if "
                    "they should go", "")  # fmt: skip
        owner = task.part_of(self.user) if task.is_consensus else None
        if task.is_consensus and (owner is None or owner.state == "COMPLETED"):
            return "the key's own part of this consensus task was submitted", ""
        if not task.is_consensus and task.assignee != self.user:
            who = task.assignee_email or task.assignee or "nobody"
            return (f"the task is assigned to {who} now, not to this API key; assign it back "
                    "to the key and undo again, or clear the labels in RedBrick", "")  # fmt: skip
        return None

    def _moved_on(self, task: Task, stage: str) -> tuple[str, str]:
        reason = f"submitted: the task has left {stage} and is in {task.stage_name or '?'}"
        again = "; then run this undo again"
        if task.is_ground_truth:
            return reason, (
                f"send it back to {stage} with move_tasks_to_start (autolabel reannotate "
                f"--task-id {task.task_id}), assign it to the API key{again}"
            )
        review = any(s.stage_name == task.stage_name and s.is_review for s in self.project.stages)
        if review:
            return reason, (
                f"a reviewer rejects it in {task.stage_name} (project.review.put_tasks("
                f"'{task.stage_name}', [{{'taskId': '{task.task_id}'}}], review_result=False)) "
                f"to send it back to {stage}{again}"
            )
        return reason, f"send it back to {stage} and assign it to the API key{again}"

    def _revert(self, task: Task, stage: str, undone: list[_Write], *, send: bool = True) -> None:
        """Write back no labels, as a draft, exactly once (see the module docstring); with
        ``send=False`` only record it (the task already holds no labels of the key's)."""
        assert self.handle is not None
        handle = self.handle
        seen = LabelsMarker.of(task, self.user)
        detail = {
            "stage": stage,
            "undid": [w.event.seq for w in undone],
            "runs": list(dict.fromkeys(w.event.run_id for w in undone)),
            "labels_seen_by": seen.created_by,
            "labels_seen_at": seen.created_at,
            "restores": RESTORED,
        }
        models = list(dict.fromkeys(w.event.model for w in undone))

        def intent(**extra: str) -> None:
            for model in models:
                handle.record(task.task_id, TaskState.UNDOING, task_name=task.name,
                              model=model, detail={**detail, **extra})  # fmt: skip

        sent = False

        def send_intent() -> None:
            nonlocal sent
            intent()
            sent = True

        try:
            if not send:
                intent(resolved="found without labels: nothing sent")
            else:  # steps as a run's write: upload, intent, task lock, re-read, send, settle
                write_task(
                    self.project, task.task_id, stage, [], finalize=False, before=seen,
                    record_intent=send_intent, settle_window_s=self.window,
                    record_in_doubt=lambda reason: intent(in_doubt=reason),
                )  # fmt: skip
        except TaskSkipped as exc:  # changed before the send: close the intent, keep it
            for model in models if sent else ():
                handle.record(task.task_id, TaskState.SKIPPED, task_name=task.name,
                              model=model, detail={"reason": exc.reason})  # fmt: skip
            raise
        for model in models:
            handle.record(task.task_id, TaskState.UNDONE, task_name=task.name, model=model,
                          detail={**detail, "restored": RESTORED})  # fmt: skip

    def _settle_undo(self, events: list[TaskEvent]) -> bool:
        """An undo killed after its intent (``events``: one per model): did the revert
        land? If so record ``undone``."""
        event = events[-1]
        seen_at = event.detail.get("labels_seen_at")

        def reverted(task: Task) -> bool:
            labels = task.labels_of(self.user)
            return (labels is not None and labels.created_by == self.user
                    and labels.created_at != seen_at and has_no_labels(labels))  # fmt: skip

        deadline = 0.0 if self.dry_run else event.at + self.window
        landed, _ = wait_until(self.project, event.task_id, reverted, deadline=deadline)
        if landed and self.handle is not None:
            resolved = {**event.detail, "restored": RESTORED, "resolved": "the revert had landed"}
            for undoing in events:
                self.handle.record(event.task_id, TaskState.UNDONE, task_name=event.task_name,
                                   model=undoing.model, detail=resolved)  # fmt: skip
        return landed


def _popped(standing: list[_Write]) -> list[_Write]:
    """The writes to undo, oldest first: the selected ones on top of the task's standing
    writes; just the top one (unselected) when the latest write is another run's."""
    count = 0
    for write in reversed(standing):
        if not write.selected:
            break
        count += 1
    return standing[-count:] if count else standing[-1:]


__all__ = ["RESTORED", "UndoItem", "UndoSummary", "parse_model", "undo"]

"""The server's rules: who may write what to which task, and where a task goes next.

Rules (protocol §5.2, §8.3; export-format.md §4):

* label writes (``putManualLabelingTaskAndLabels``, ``putManualLabelingTask``) only on a
  task whose current stage is the named stage and that is assigned to the caller; a draft
  (``finished=false``) keeps it there with state ``STAGED``; a submit routes it on;
* reviews (``putExpertReviewTask``) only in a review stage, by the assignee; pass goes to
  ``routing.passed``, fail to ``routing.failed`` (a feedback stage leads back to Label,
  where the task is given back to the labeler who last worked on it);
* ``moveTaskToStart`` only from Ground Truth (``END``) to the first label stage;
* entering a stage leaves a task unassigned unless its ``stageConfig.autoAssign`` is true,
  in which case it goes back to whoever last worked on it in that stage;
* a review stage with ``stageConfig.reviewPercent`` below 1 reviews only that share of the
  tasks routed to it; the others go on as if it had passed them.

Every attempt is recorded in the events table, refused or accepted. A refusal raises
:class:`RuleViolation`, whose message names the task and the rule.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from autolabel.emulator.entities import (
    LabelRecord,
    ProjectRecord,
    TaskRecord,
    UserRecord,
    utc_now,
)
from autolabel.emulator.stages import (
    GROUND_TRUTH,
    LABEL_BRICK,
    REVIEW_BRICK,
    RuleViolation,
    first_label_stage,
    resolve_stage,
    skip_unsampled_reviews,
    stage_config,
    stage_named,
)
from autolabel.emulator.store import Store

T = TypeVar("T")


# -- stages -------------------------------------------------------------------------------


def _part_state(store: Store, task: TaskRecord, user_id: str) -> str | None:
    """The state of ``user_id``'s own part of ``task`` in its stage: the task's state for
    its assignee (``currentStageSubTask``), the sub-task's for another consensus labeler
    (``subTasks``, redbrick/utils/rb_label_utils.py ``flat_rb_format``); None if neither."""
    if task.assigned_to == user_id:
        return task.state
    for sub in store.sub_tasks(task.task_id, task.stage_name):
        if sub["user_id"] == user_id:
            return str(sub["state"])
    return None


def _set_part_state(store: Store, task: TaskRecord, user_id: str, state: str) -> None:
    if task.assigned_to == user_id:
        store.update_task(task.task_id, state=state, progress_saved_at=utc_now())
    else:
        store.set_sub_task_state(task.task_id, task.stage_name, user_id, state)


def _last_worker(store: Store, task_id: str, stage_name: str) -> str | None:
    """The user whose accepted write in ``stage_name`` was the most recent."""
    for event in reversed(store.events(task_id)):
        if event.accepted and event.stage_name == stage_name and event.user_id:
            return event.user_id
    return None


def enter_stage(
    store: Store, project: ProjectRecord, task: TaskRecord, target: str, *, returned: bool = False
) -> str:
    """Move ``task`` into ``target`` (already resolved); returns the stage it is in.

    ``returned`` marks a rejection: the task goes back to its previous labeler. A review
    stage that does not sample the task is passed through (:func:`skip_unsampled_reviews`).
    """
    target = skip_unsampled_reviews(project, task.task_id, target)
    now = utc_now()
    store.set_sub_tasks(task.task_id, target, [])  # a new stage starts with no sub-tasks
    if target == GROUND_TRUTH:
        store.update_task(
            task.task_id,
            stage_name=GROUND_TRUTH,
            state="COMPLETED",
            assigned_to=None,
            assigned_at=None,
            completed_at=now,
        )
        return target
    stage = stage_named(project, target)
    auto = bool(stage and stage_config(stage).get("autoAssign"))
    assignee = _last_worker(store, task.task_id, target) if (auto or returned) else None
    store.update_task(
        task.task_id,
        stage_name=target,
        state="ASSIGNED" if assignee else "UNASSIGNED",
        assigned_to=assignee,
        assigned_at=now if assignee else None,
        progress_saved_at=None,
        completed_at=None,
    )
    return target


# -- checks -------------------------------------------------------------------------------


def project_for(store: Store, caller: UserRecord, org_id: str, project_id: str) -> ProjectRecord:
    """The project, if the caller's org owns it; else a violation naming the project."""
    project = store.project(project_id)
    if project is None or project.org_id != org_id or caller.org_id != org_id:
        raise RuleViolation(f"Project {project_id} does not exist in organization {org_id}")
    return project


def task_in(store: Store, project: ProjectRecord, task_id: str) -> TaskRecord:
    """The task, if it belongs to the project."""
    task = store.task(task_id)
    if task is None or task.project_id != project.project_id:
        raise RuleViolation(f"Task {task_id} does not exist in project {project.project_id}")
    return task


def _check_queued(
    task: TaskRecord, stage_name: str, caller: UserRecord, store: Store | None = None
) -> None:
    """Refuse unless ``task`` is in ``stage_name`` and ``caller`` holds it there: as its
    assignee or (with ``store``) as a consensus labeler whose sub-task is not submitted."""
    if task.stage_name != stage_name:
        raise RuleViolation(
            f"Task {task.task_id} is not in stage {stage_name}: it is queued in"
            f" {task.stage_name}. Write to a task only in its current stage."
        )
    part = _part_state(store, task, caller.user_id) if store is not None else None
    if task.assigned_to == caller.user_id or part is not None:
        if part == "COMPLETED" and task.assigned_to != caller.user_id:
            raise RuleViolation(
                f"Task {task.task_id}: you ({caller.user_id}) already submitted your"
                f" consensus sub-task in {stage_name}."
            )
        return
    holder = task.assigned_to or "nobody"
    raise RuleViolation(
        f"Task {task.task_id} is not assigned to you ({caller.user_id}): it is assigned"
        f" to {holder} in {stage_name}. Only the assignee can write labels or reviews."
    )


def _consensus_submit(store: Store, task: TaskRecord, caller: UserRecord) -> bool:
    """Submit ``caller``'s part of a consensus task; True while another labeler's part is
    still open (the task stays), False once all are submitted or for a task without
    sub-tasks (the task then moves on). The SDK does not show when the real server routes a
    consensus task; waiting for every labeler is this emulator's inference."""
    subs = store.sub_tasks(task.task_id, task.stage_name)
    if not subs:
        return False
    _set_part_state(store, task, caller.user_id, "COMPLETED")
    fresh = store.task(task.task_id) or task
    states = [fresh.state, *(s["state"] for s in store.sub_tasks(task.task_id, task.stage_name))]
    return any(state != "COMPLETED" for state in states)


def check_stage_kind(project: ProjectRecord, subject: str, stage_name: str, *bricks: str) -> None:
    """Refuse unless ``stage_name`` is a stage with one of ``bricks``; ``subject`` leads."""
    stage = stage_named(project, stage_name)
    if stage is None or stage["brickName"] not in bricks:
        kinds = " or ".join("review" if b == REVIEW_BRICK else "label" for b in bricks)
        raise RuleViolation(
            f"{subject}: stage {stage_name} is not a {kinds} stage of project {project.project_id}"
        )


def attempt(
    store: Store,
    operation: str,
    caller: UserRecord,
    action: Callable[[], T],
    *,
    task_id: str | None,
    stage_name: str | None,
    finished: bool | None = None,
    review_val: bool | None = None,
) -> T:
    """Run a write in one transaction and record it as an accepted or refused event."""
    event = functools.partial(
        store.add_event,
        operation,
        task_id=task_id,
        stage_name=stage_name,
        user_id=caller.user_id,
        finished=finished,
        review_val=review_val,
    )
    try:
        with store.transaction():
            result = action()
            event(accepted=True)
    except RuleViolation as exc:
        event(accepted=False, message=str(exc))
        raise
    return result


# -- writes -------------------------------------------------------------------------------


def save_labels(
    store: Store,
    caller: UserRecord,
    project: ProjectRecord,
    *,
    task_id: str,
    stage_name: str,
    finished: bool,
    labels_data: str | None,
    labels_data_path: str | None,
    labels_map: list[dict[str, Any] | None],
    storage_id: str,
    file_exists: Callable[[str], bool],
    copy_file: Callable[[str, str], None] | None = None,
) -> None:
    """``putManualLabelingTaskAndLabels``: save labels, then keep (draft) or route (submit).

    With ``copy_file(source, target)`` the label files are kept as the server keeps them
    (see :func:`stored_labels_map`); without it the names are stored as sent.
    """

    def action() -> None:
        task = task_in(store, project, task_id)
        check_stage_kind(project, f"Task {task_id}", stage_name, LABEL_BRICK, REVIEW_BRICK)
        _check_queued(task, stage_name, caller, store)
        try:
            parsed = json.loads(labels_data or "[]")
        except json.JSONDecodeError as exc:
            raise RuleViolation(f"Task {task_id}: labelsData is not JSON ({exc})") from None
        if not isinstance(parsed, list):
            raise RuleViolation(f"Task {task_id}: labelsData must be a JSON list")
        paths = [e["labelName"] for e in labels_map if e and e.get("labelName")]
        if labels_data_path:
            paths.append(labels_data_path)
        for path in paths:
            if not file_exists(path):
                raise RuleViolation(f"Task {task_id}: label file {path} was not uploaded")
        # No labels at all (labelsData "[]" or null, labelsMap [] or only nulls) is a
        # write like any other: new latest labels that hold nothing. It is what the SDK
        # sends for a task whose series carry no segmentation (redbrick/labeling/public.py
        # put_tasks gives it a dummy series; redbrick/utils/upload.py
        # process_segmentation_upload sends a series without a file as null), and how
        # `autolabel undo` writes back "no labels".
        stored = labels_map
        if copy_file is not None:
            stored = stored_labels_map(project, task, labels_map, copy_file)
        store.add_labels(
            LabelRecord(
                td_id=str(uuid.uuid4()),
                task_id=task_id,
                stage_name=stage_name,
                # A large label set lives in the labelsDataPath file and labelsData is then
                # empty (redbrick/utils/rb_label_utils.py from_rb_task_data ignores it).
                labels_data="[]" if labels_data_path else json.dumps(parsed),
                labels_data_path=labels_data_path,
                labels_map=stored,
                storage_id=storage_id,
                created_by=caller.user_id,
                created_at=utc_now(),
                finished=finished,
            )
        )
        if not finished:
            _set_part_state(store, task, caller.user_id, "STAGED")
            return
        if _consensus_submit(store, task, caller):
            return  # other labelers of this consensus task have not submitted yet
        _submit(store, project, task, stage_name, corrected=True)

    attempt(
        store,
        "putManualLabelingTaskAndLabels",
        caller,
        action,
        task_id=task_id,
        stage_name=stage_name,
        finished=finished,
    )


def stored_labels_map(
    project: ProjectRecord,
    task: TaskRecord,
    labels_map: list[dict[str, Any] | None],
    copy_file: Callable[[str, str], None],
) -> list[dict[str, Any] | None]:
    """The ``labelsMap`` as the server keeps it: each label file moved to a server path
    and named by the ``imageIndex`` of its series' first item, with no ``seriesIndex``.

    Follows redbrick/export/public.py ``process_labels`` (the SDK places a stored entry by
    ``seriesIndex``, else by the series whose ``itemsIndices`` hold its ``imageIndex``) and
    the stored paths ``<org>/<project>/labels/<task>/nifti/<uuid>`` of the SDK's test
    fixtures (redbrick-protocol.md §3.6). An entry is matched to its series by its
    ``seriesIndex``, else by its position, as redbrick/utils/upload.py sends them. The
    uploaded file stays readable (whether the real server deletes it is unknown).
    """
    stored: list[dict[str, Any] | None] = []
    for position, entry in enumerate(labels_map):
        if not entry or not entry.get("labelName"):
            stored.append(None)
            continue
        index = entry.get("seriesIndex")
        index = position if index is None else int(index)
        info = task.series_info[index] if 0 <= index < len(task.series_info) else {}
        indices = info.get("itemsIndices") or []
        target = f"{project.org_id}/{project.project_id}/labels/{task.task_id}/nifti/{uuid.uuid4()}"
        copy_file(str(entry["labelName"]), target)
        if indices:
            stored.append({"labelName": target, "imageIndex": int(indices[0])})
        else:  # no item split known: only the position can say where it goes
            stored.append({"labelName": target, "seriesIndex": index})
    return stored


def _submit(
    store: Store, project: ProjectRecord, task: TaskRecord, stage_name: str, *, corrected: bool
) -> None:
    stage = stage_named(project, stage_name) or {}
    routing = stage.get("routing") or {}
    if stage.get("brickName") == REVIEW_BRICK:
        # A review stage's submit with labels is "accept with correction" (export-format §4.3).
        store.update_task(task.task_id, review_state="CORRECTED" if corrected else "PASSED")
        target = routing.get("passed")
    else:
        target = routing.get("nextStageName")
    enter_stage(store, project, task, resolve_stage(project, target))


def submit_existing(
    store: Store, caller: UserRecord, project: ProjectRecord, *, task_id: str, stage_name: str
) -> None:
    """``putManualLabelingTask``: submit the task with the labels it already has."""

    def action() -> None:
        task = task_in(store, project, task_id)
        check_stage_kind(project, f"Task {task_id}", stage_name, LABEL_BRICK)
        _check_queued(task, stage_name, caller, store)
        if _consensus_submit(store, task, caller):
            return
        _submit(store, project, task, stage_name, corrected=False)

    attempt(
        store,
        "putManualLabelingTask",
        caller,
        action,
        task_id=task_id,
        stage_name=stage_name,
        finished=True,
    )


def review(
    store: Store,
    caller: UserRecord,
    project: ProjectRecord,
    *,
    task_id: str,
    stage_name: str,
    passed: bool,
) -> None:
    """``putExpertReviewTask``: accept (to ``routing.passed``) or reject (``routing.failed``)."""

    def action() -> None:
        task = task_in(store, project, task_id)
        check_stage_kind(project, f"Task {task_id}", stage_name, REVIEW_BRICK)
        _check_queued(task, stage_name, caller)
        routing = (stage_named(project, stage_name) or {}).get("routing") or {}
        store.update_task(task_id, review_state="PASSED" if passed else "FAILED")
        target = resolve_stage(project, routing.get("passed" if passed else "failed"))
        enter_stage(store, project, task, target, returned=not passed)

    attempt(
        store,
        "putExpertReviewTask",
        caller,
        action,
        task_id=task_id,
        stage_name=stage_name,
        review_val=passed,
    )


def move_to_start(
    store: Store, caller: UserRecord, project: ProjectRecord, *, task_id: str
) -> None:
    """``moveTaskToStart``: send a Ground Truth task back to the first label stage."""

    def action() -> None:
        task = task_in(store, project, task_id)
        if task.stage_name != GROUND_TRUTH:
            raise RuleViolation(
                f"Task {task_id} is queued in {task.stage_name}, not in Ground Truth: only"
                " Ground Truth tasks can be moved to start"
            )
        store.update_task(task_id, review_state=None)
        enter_stage(store, project, task, first_label_stage(project))

    task = store.task(task_id)
    attempt(
        store,
        "moveTaskToStart",
        caller,
        action,
        task_id=task_id,
        stage_name=task.stage_name if task else None,
    )

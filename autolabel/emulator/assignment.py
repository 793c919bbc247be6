"""Assignment: who holds a task in its current stage (``assignTasksMultipleUsers``).

Assignment is per stage; tasks in Ground Truth or archived cannot be assigned. Emails,
user ids and ``API:`` ids all name a user (protocol §2.10: the SDK can only address an API
key through ``emails``). The removed ``assignLabelingTasks`` (SDK < 2.13) is served too, and task priorities
(``updateTasksPriorities``), which order a labeler's queue.
"""

from __future__ import annotations

from autolabel.emulator.entities import ProjectRecord, TaskRecord, UserRecord, utc_now
from autolabel.emulator.stages import (
    ARCHIVED,
    GROUND_TRUTH,
    LABEL_BRICK,
    REVIEW_BRICK,
    RuleViolation,
    is_consensus_stage,
)
from autolabel.emulator.store import Store
from autolabel.emulator.workflow import attempt, check_stage_kind, task_in


def assign(
    store: Store,
    caller: UserRecord,
    project: ProjectRecord,
    *,
    task_ids: list[str],
    emails: list[str] | None,
    current_user: bool = False,
) -> list[TaskRecord]:
    """``assignTasksMultipleUsers``: assign each task (in its stage) or unassign it.

    ``emails`` entries may be emails, user ids or ``API:`` ids; the first one becomes the
    assignee. In a consensus stage (``isConsensusLabel``) every further one labels the task
    in a sub-task of its own, and the list replaces the labelers (the SDK's ``assign_tasks``
    with several emails and ``refresh``, redbrick/labeling/public.py); elsewhere only the
    first counts. None unassigns; ``current_user`` assigns to the caller.
    """
    assignee: UserRecord | None = caller if current_user else None
    others: list[str] = []
    for position, email in enumerate(emails or []):
        found = store.user(email)
        if found is None or found.org_id != project.org_id:
            raise RuleViolation(f"User {email} is not a member of organization {project.org_id}")
        if position == 0:
            assignee = found
        elif found.user_id not in others and found.user_id != assignee_id(assignee):
            others.append(found.user_id)
    done = []
    for task_id in task_ids:

        def action(task_id: str = task_id) -> TaskRecord:
            task = task_in(store, project, task_id)
            if task.stage_name in (GROUND_TRUTH, ARCHIVED):
                raise RuleViolation(
                    f"Task {task_id} is in {task.stage_name}: only tasks in a label or"
                    " review stage can be assigned"
                )
            store.update_task(
                task_id,
                assigned_to=assignee.user_id if assignee else None,
                assigned_at=utc_now() if assignee else None,
                state="ASSIGNED" if assignee else "UNASSIGNED",
            )
            consensus = is_consensus_stage(project, task.stage_name) and assignee is not None
            store.set_sub_tasks(task_id, task.stage_name, others if consensus else [])
            return task

        task = store.task(task_id)
        stage = task.stage_name if task else None
        done.append(
            attempt(
                store, "assignTasksMultipleUsers", caller, action, task_id=task_id, stage_name=stage
            )
        )
    return [t for t in (store.task(t.task_id) for t in done) if t is not None]


def assign_queue(
    store: Store, caller: UserRecord, project: ProjectRecord, *, stage_name: str, count: int
) -> list[TaskRecord]:
    """``assignLabelingTasks`` (SDK < 2.13): give the caller up to ``count`` free tasks."""
    check_stage_kind(project, "assignLabelingTasks", stage_name, LABEL_BRICK, REVIEW_BRICK)
    free = [
        t
        for t in store.tasks(project.project_id)
        if t.stage_name == stage_name and t.assigned_to is None
    ]
    mine = [
        t
        for t in store.tasks(project.project_id)
        if t.stage_name == stage_name and t.assigned_to == caller.user_id
    ]
    picked = sorted(free, key=lambda t: -(t.priority or 0.0))[: max(0, count - len(mine))]
    for task in picked:
        assign(store, caller, project, task_ids=[task.task_id], emails=[caller.user_id])
    return [t for t in (store.task(x.task_id) for x in [*mine, *picked]) if t is not None]


def set_priorities(store: Store, project: ProjectRecord, tasks: list[dict[str, object]]) -> None:
    """``updateTasksPriorities``: set each task's priority, all or none.

    Follows redbrick/upload/public.py ``update_tasks_priority``: entries ``{taskId,
    priority in [0, 1], user?}`` ("used to determine how the tasks get assigned to
    annotators/reviewers"). The optional ``user`` is refused: the SDK does not say what it
    does, so the emulator does not guess.
    """
    found = []
    for entry in tasks:
        task = task_in(store, project, str(entry["taskId"]))
        priority = entry.get("priority")
        if not isinstance(priority, int | float) or not 0 <= priority <= 1:
            # follows redbrick/types/task.py: "priority must between [0, 1]"
            raise RuleViolation(f"Task {task.task_id}: priority {priority!r} is not in [0, 1]")
        if entry.get("user") is not None:
            raise RuleViolation("updateTasksPriorities with a user is not emulated")
        found.append((task.task_id, float(priority)))
    for task_id, priority in found:
        store.update_task(task_id, priority=priority)


def assignee_id(user: UserRecord | None) -> str | None:
    """The user id of ``user``, or None."""
    return user.user_id if user is not None else None

"""Task listing: ``genericTasks`` filters and cursor pagination (protocol §1.7, §2.6, §8.3).

* ``stageName``: null = every stage; ``END`` and the output stage's name = Ground Truth.
* ``taskSearch``: a name prefix, an exact name in double quotes, or a task id.
* ``manualLabelingFilters``: ``userId`` (a user id or email; present-and-null = unassigned),
  ``status`` (``TaskStates``), ``taskId``, ``reviewState`` (the last review result of a task
  reviewed in ``stageName``), ``recentlyCompleted`` with ``completedAtFrom``/``To`` (tasks
  submitted or reviewed in ``stageName``, by ``userId`` if given, in that window).
* A listing by stage (or of every task) is a queue: highest ``priority`` first
  (redbrick/types/task.py: "Tasks will be ordered in descending order of priority"),
  creation order among equals; listings by completion or review result stay in creation
  order.
* The cursor is the offset of the next page as a string; null after the last page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from autolabel.emulator.entities import ProjectRecord, TaskRecord
from autolabel.emulator.stages import GROUND_TRUTH, is_ground_truth
from autolabel.emulator.store import Store

DEFAULT_PAGE = 10
MAX_PAGE = 500


def _in_stage(project: ProjectRecord, task: TaskRecord, stage_name: str | None) -> bool:
    if stage_name is None:
        return True
    if is_ground_truth(project, stage_name):
        return task.stage_name == GROUND_TRUTH
    return task.stage_name == stage_name


def _matches_search(task: TaskRecord, search: str | None) -> bool:
    if not search:
        return True
    text = search.strip()
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return task.name == text[1:-1]
    return task.name.startswith(text) or task.task_id == text


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _completed_ids(
    store: Store, stage_name: str | None, user_id: str | None, filters: dict[str, Any]
) -> set[str]:
    start, end = _when(filters.get("completedAtFrom")), _when(filters.get("completedAtTo"))
    found = set()
    for event in store.events():
        if not event.accepted or event.task_id is None:
            continue
        if event.finished is not True and event.review_val is None:
            continue
        if stage_name is not None and event.stage_name != stage_name:
            continue
        if user_id is not None and event.user_id != user_id:
            continue
        at = _when(event.at)
        if (start and at and at < start) or (end and at and at > end):
            continue
        found.add(event.task_id)
    return found


def _reviewed_in(store: Store, stage_name: str | None) -> set[str]:
    return {
        e.task_id
        for e in store.events()
        if e.accepted
        and e.task_id
        and e.review_val is not None
        and (stage_name is None or e.stage_name == stage_name)
    }


def search(
    store: Store,
    project: ProjectRecord,
    *,
    stage_name: str | None,
    task_search: str | None,
    filters: dict[str, Any],
) -> list[TaskRecord]:
    """The project's tasks matching a ``genericTasks`` request (see the module docstring
    for their order)."""
    tasks = store.tasks(project.project_id)
    user_id: str | None = None
    if filters.get("userId") is not None:
        user = store.user(str(filters["userId"]))
        user_id = user.user_id if user else str(filters["userId"])
    if filters.get("recentlyCompleted"):
        done = _completed_ids(store, stage_name, user_id, filters)
        tasks = [t for t in tasks if t.task_id in done]
    elif filters.get("reviewState"):
        reviewed = _reviewed_in(store, stage_name)
        tasks = [
            t for t in tasks if t.task_id in reviewed and t.review_state == filters["reviewState"]
        ]
    else:
        tasks = [t for t in tasks if _in_stage(project, t, stage_name)]
        if "userId" in filters:
            tasks = [t for t in tasks if _holds(store, t, user_id)]
        # follows redbrick/types/task.py: a queue in descending priority (a stable sort)
        tasks.sort(key=lambda t: -(t.priority or 0.0))
    if filters.get("status"):
        tasks = [t for t in tasks if t.state == filters["status"]]
    if filters.get("taskId"):
        tasks = [t for t in tasks if t.task_id == str(filters["taskId"])]
    return [t for t in tasks if _matches_search(t, task_search)]


def _holds(store: Store, task: TaskRecord, user_id: str | None) -> bool:
    """``task`` is queued for ``user_id`` (None: unassigned): as its assignee, or as a
    consensus labeler whose own sub-task is open (the SDK lists a labeler's consensus tasks
    the same way, redbrick/export/public.py ``list_tasks`` reading ``subTasks``)."""
    if task.assigned_to == user_id:
        return True
    if user_id is None:
        return False
    return any(
        s["user_id"] == user_id and s["state"] != "COMPLETED"
        for s in store.sub_tasks(task.task_id, task.stage_name)
    )


def by_stage(
    store: Store, project: ProjectRecord, stage_name: str | None, cache_time: str | None
) -> list[TaskRecord]:
    """``tasksPaged``: tasks in a stage (or all), updated at or after ``cache_time``."""
    since = _when(cache_time)
    tasks = [t for t in store.tasks(project.project_id) if _in_stage(project, t, stage_name)]
    if since is not None:
        tasks = [t for t in tasks if (_when(t.updated_at) or since) >= since]
    return tasks


def paginate(
    tasks: list[TaskRecord], first: int | None, after: str | None
) -> tuple[list[TaskRecord], str | None]:
    """One page and the cursor of the next (None after the last page)."""
    size = min(max(1, first or DEFAULT_PAGE), MAX_PAGE)
    try:
        start = max(0, int(after)) if after else 0
    except ValueError:
        start = 0
    end = start + size
    return tasks[start:end], (str(end) if end < len(tasks) else None)

"""``project.upload``: the SDK's task-level upload calls autolabel uses (task priority)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autolabel.redbrick.project import Project

#: Tasks per request: the SDK's ``update_tasks_priority`` caps its batches at 50.
PRIORITY_BATCH = 50


class Upload:
    """``project.upload``: as ``redbrick.upload.public.Upload``, for the calls it mirrors."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"Upload(project={self.project.project_id!r})"

    def update_tasks_priority(self, tasks: Sequence[Mapping[str, Any]]) -> None:
        """Set task priorities: ``[{"taskId": str, "priority": float in [0, 1], "user"?: str}]``.

        Labelers' queues list higher priorities first. Batches of :data:`PRIORITY_BATCH`,
        as the SDK sends them; unlike the SDK (which logs the first error) a refusal raises
        :class:`~autolabel.errors.PlatformError`, and a priority outside ``[0, 1]`` raises
        ``ValueError`` before anything is sent.
        """
        for task in tasks:
            priority = task.get("priority")
            if not isinstance(priority, int | float) or not 0 <= priority <= 1:
                raise ValueError(f"task {task.get('taskId')}: priority {priority!r} not in [0, 1]")
        project = self.project
        for start in range(0, len(tasks), PRIORITY_BATCH):
            project.client.update_tasks_priorities(
                project.org_id, project.project_id, tasks[start : start + PRIORITY_BATCH]
            )

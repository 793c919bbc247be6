"""autolabel's RedBrick AI client, shaped like the official SDK's documented calls.

Port a script by changing one import::

    from autolabel import redbrick          # instead of: import redbrick

    project = redbrick.get_project(org_id, project_id, api_key, url="http://localhost:8080")
    project.labeling.put_tasks("Label", [{"taskId": tid, "series": [...]}], finalize=False)
    project.review.put_tasks("Review_1", [{"taskId": tid}], review_result=True)
    project.labeling.move_tasks_to_start(task_ids=[tid])
    for task in project.export.list_tasks(search=redbrick.TaskFilters.QUEUED,
                                          stage_name="Label", user_id=project.context.key_id):
        ...

The SDK's exception names are aliases of :mod:`autolabel.errors` classes, so both
``except redbrick.AuthenticationError`` and ``except autolabel.errors.AuthError`` work.
Unlike SDK 2.35.4, a broken task rule (not assigned to the key, not in the stage, not in
Ground Truth) raises :class:`TaskStateError`, not ``GraphQLError``; catch
:class:`PlatformError` (alias ``RedbrickError``) to catch every platform failure.
The typed layer for the pipeline is :class:`Project` (``get_task``,
``list_assigned_tasks``, ``download_items``, ``save_labels``...) over
:class:`RedBrickClient` (one method per GraphQL operation).
"""

from __future__ import annotations

from autolabel.errors import (
    AuthError,
    ConversionError,
    GraphQLError,
    NotFoundError,
    PlatformError,
    TaskStateError,
    TransportError,
)
from autolabel.redbrick.client import RedBrickClient
from autolabel.redbrick.endpoint import DEFAULT_URL, graphql_endpoint
from autolabel.redbrick.pages import paginate
from autolabel.redbrick.project import Project, get_project
from autolabel.redbrick.retry import RetryPolicy
from autolabel.redbrick.session import Context, DownloadedSeries
from autolabel.redbrick.transport import Transport
from autolabel.redbrick.types import (
    GROUND_TRUTH_STAGE,
    PUBLIC_STORAGE_ID,
    REDBRICK_STORAGE_ID,
    Labels,
    Series,
    Stage,
    Task,
    TaskFilters,
    TaskStates,
)


class StorageMethod:
    """Well-known storage ids (the SDK's ``redbrick.StorageMethod``)."""

    PUBLIC = PUBLIC_STORAGE_ID
    REDBRICK = REDBRICK_STORAGE_ID


# The SDK's exception names (redbrick/common/exceptions.py), mapped onto our one error tree;
# the two that shadow builtins under the names the SDK exports them by (redbrick/__init__.py).
RedbrickError = PlatformError
AuthenticationError = AuthError
InvalidApiKeyError = AuthError
RBPermissionError = AuthError
NetworkError = TransportError
RateLimitError = TransportError
RBTimeoutError = TransportError
ValidationError = ConversionError

__all__ = [
    "DEFAULT_URL",
    "GROUND_TRUTH_STAGE",
    "AuthError",
    "AuthenticationError",
    "Context",
    "ConversionError",
    "DownloadedSeries",
    "GraphQLError",
    "InvalidApiKeyError",
    "Labels",
    "NetworkError",
    "NotFoundError",
    "PlatformError",
    "Project",
    "RBPermissionError",
    "RBTimeoutError",
    "RateLimitError",
    "RedBrickClient",
    "RedbrickError",
    "RetryPolicy",
    "Series",
    "Stage",
    "StorageMethod",
    "Task",
    "TaskFilters",
    "TaskStateError",
    "TaskStates",
    "Transport",
    "TransportError",
    "ValidationError",
    "get_project",
    "graphql_endpoint",
    "paginate",
]

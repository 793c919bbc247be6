"""Typed RedBrick operations: one method per GraphQL operation of redbrick-protocol.md §2.

:class:`RedBrickClient` is the low level: it sends the SDK's documents with the SDK's
variables and returns the wire data, with no workflow logic. Queries are idempotent and
retried by the transport; mutations are sent once. :mod:`autolabel.redbrick.project` builds
the user-facing API on top of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from autolabel.errors import GraphQLError, NotFoundError, PlatformError
from autolabel.redbrick import documents
from autolabel.redbrick.pages import (
    ListingErrorHandler,
    listing_errors,
    paginate,
)
from autolabel.redbrick.retry import RetryPolicy
from autolabel.redbrick.transport import Transport
from autolabel.redbrick.types import (
    AssignedTask,
    ConvertResult,
    LabelMapEntry,
    LabelStorage,
    PresignedUpload,
)

#: The ``taskSDK`` document by (consensus project, with presigned item URLs).
_TASK_DOCUMENTS = {
    (False, True): documents.GET_TASK,
    (True, True): documents.GET_TASK_CONSENSUS,
    (False, False): documents.GET_TASK_UNSIGNED,
    (True, False): documents.GET_TASK_CONSENSUS_UNSIGNED,
}


class RedBrickClient:
    """All RedBrick operations autolabel uses, against one API with one key.

    Safe to share between threads. ``url`` is the base URL users pass to the SDK
    (``https://api.redbrickai.com`` by default, or ``http://localhost:PORT`` for the
    emulator); see :func:`autolabel.redbrick.endpoint.graphql_endpoint`.
    """

    def __init__(
        self,
        api_key: str,
        url: str | None = None,
        *,
        timeout: tuple[float, float] = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        pool_size: int = 16,
        verify: bool | str = True,
    ) -> None:
        self.transport = Transport(
            api_key, url, timeout=timeout, retry=retry, pool_size=pool_size, verify=verify
        )

    def __repr__(self) -> str:
        return f"RedBrickClient(endpoint={self.transport.endpoint!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    def _query(self, operation: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        return self.transport.execute(
            operation, documents.DOCUMENTS[operation], variables, idempotent=True
        )

    def _partial_query(
        self,
        operation: str,
        on_error: ListingErrorHandler | None,
        variables: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A listing query read with ``raise_for_error=False`` semantics (see list_tasks)."""
        problems: list[dict[str, Any]] = []
        data = self.transport.execute(
            operation, documents.DOCUMENTS[operation], variables, idempotent=True, partial=problems
        )
        if problems:
            root = next(iter(data.values()), None)
            entries = list(root.get("entries") or []) if isinstance(root, dict) else []
            listing_errors(operation, problems, entries, on_error)
        return data

    def _mutate(self, operation: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        return self.transport.execute(
            operation, documents.DOCUMENTS[operation], variables, idempotent=False
        )

    # -- project -------------------------------------------------------------------------

    def get_project(self, org_id: str, project_id: str) -> dict[str, Any]:
        """``getProjectSDK``: the project with its stages and full taxonomy.

        Raises :class:`NotFoundError` when the server answers ``project: null``.
        """
        data = self._query("getProjectSDK", {"orgId": org_id, "projectId": project_id})
        project = data.get("project")
        if not project:
            raise NotFoundError(
                f"Project {project_id} does not exist in organization {org_id} (or the key "
                "cannot see it)",
                operation="getProjectSDK",
            )
        return dict(project)

    def current_user_id(self) -> str:
        """``currentUserSDK``: the user id of the API key (``API:<uuid>``)."""
        me = self._query("currentUserSDK", {}).get("me") or {}
        if not me.get("userId"):
            raise GraphQLError(
                ["currentUserSDK: no user id in the answer"], operation="currentUserSDK"
            )
        return str(me["userId"])

    def members(self, org_id: str, *, only_active: bool = False) -> list[dict[str, Any]]:
        """``membersSDK``: the organization's members (``user{userId email ...}``, role)."""
        data = self._query("membersSDK", {"orgId": org_id, "onlyActive": only_active})
        return list(data.get("members") or [])

    def label_storage(self, org_id: str, project_id: str) -> LabelStorage:
        """``getLabelStorageSDK``: the project's label storage id and path."""
        data = self._query("getLabelStorageSDK", {"orgId": org_id, "projectId": project_id})
        storage = data.get("getLabelStorage")
        if not storage:
            raise NotFoundError("No label storage for the project", operation="getLabelStorageSDK")
        return LabelStorage(storageId=storage["storageId"], path=storage.get("path") or "")

    # -- tasks ---------------------------------------------------------------------------

    def list_tasks(
        self,
        org_id: str,
        project_id: str,
        *,
        stage_name: str | None = None,
        task_search: str | None = None,
        filters: Mapping[str, Any] | None = None,
        page_size: int = 50,
        limit: int | None = None,
        on_error: ListingErrorHandler | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``tasksListSDK`` (``genericTasks``), paginated: task entries without items.

        ``filters`` is the ``TasksFilter`` input: ``userId`` (id or email; present and
        ``None`` = unassigned), ``status``, ``taskId``, ``reviewState``,
        ``recentlyCompleted``, ``completedAtFrom``/``completedAtTo``. ``task_search`` is a
        name prefix, an exact name in double quotes, or a task id.

        Read as the SDK reads it (``raise_for_error=False``): field errors next to data do
        not end the listing; each goes to ``on_error`` (logged when None) and entries the
        server answered null are left out.
        """

        def page(after: str | None, first: int) -> tuple[list[dict[str, Any]], str | None]:
            data = self._partial_query(
                "tasksListSDK",
                on_error,
                {
                    "orgId": org_id,
                    "projectId": project_id,
                    "stageName": stage_name,
                    "taskSearch": task_search,
                    "manualLabelingFilters": dict(filters or {}),
                    "first": first,
                    "after": after,
                },
            )
            found = data.get("genericTasks") or {}
            return [e for e in found.get("entries") or [] if e], found.get("cursor")

        return paginate(page, page_size=page_size, limit=limit)

    def tasks_paged(
        self,
        org_id: str,
        project_id: str,
        *,
        stage_name: str | None = None,
        cache_time: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
        on_error: ListingErrorHandler | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``tasksPagedSDK``, paginated: full task entries (items, latest labels) of a stage.

        ``stage_name="END"`` gives Ground Truth; ``None`` every task; ``cache_time`` (ISO
        UTC) only tasks changed since then. Field errors are handled as in
        :meth:`list_tasks`.
        """

        def page(after: str | None, first: int) -> tuple[list[dict[str, Any]], str | None]:
            data = self._partial_query(
                "tasksPagedSDK",
                on_error,
                {
                    "orgId": org_id,
                    "projectId": project_id,
                    "stageName": stage_name,
                    "cacheTime": cache_time,
                    "first": first,
                    "after": after,
                },
            )
            found = data.get("tasksPaged") or {}
            return [e for e in found.get("entries") or [] if e], found.get("cursor")

        return paginate(page, page_size=page_size, limit=limit)

    def get_task(
        self,
        org_id: str,
        project_id: str,
        task_id: str,
        *,
        consensus: bool = False,
        presigned_items: bool = True,
    ) -> dict[str, Any]:
        """``taskSDK``: one task with items and latest labels; :class:`NotFoundError` if none.

        ``consensus`` (a consensus project) reads the labelers' sub-tasks with their own
        labels, as the SDK does there (:data:`documents.GET_TASK_CONSENSUS`). Without
        ``presigned_items`` the answer has no ``itemsPresigned`` (the SDK's
        ``presign_items=False`` read, :data:`documents.GET_TASK_UNSIGNED`).
        """
        variables = {"orgId": org_id, "projectId": project_id, "taskId": task_id}
        document = _TASK_DOCUMENTS[(consensus, presigned_items)]
        data = self.transport.execute("taskSDK", document, variables, idempotent=True)
        task = data.get("task")
        if not task:
            raise NotFoundError(
                f"Task {task_id} does not exist in this project", operation="taskSDK"
            )
        return dict(task)

    # -- storage -------------------------------------------------------------------------

    def presign_items(self, org_id: str, storage_id: str, items: Sequence[str]) -> list[str | None]:
        """``presignItemsSDK``: GET URLs aligned with ``items`` (``None`` where unknown)."""
        if not items:
            return []
        data = self._query(
            "presignItemsSDK", {"orgId": org_id, "storageId": storage_id, "items": list(items)}
        )
        urls = list(data.get("presignItems") or [])
        if len(urls) != len(items):
            raise GraphQLError(
                [f"presignItemsSDK: {len(urls)} URLs for {len(items)} items"],
                operation="presignItemsSDK",
            )
        return urls

    def presign_uploads(
        self,
        org_id: str,
        project_id: str,
        *,
        segmentation_files: Sequence[str] = (),
        data_files: Sequence[str] = (),
    ) -> tuple[list[PresignedUpload], list[PresignedUpload]]:
        """``presignUploadsSDK``: PUT URLs for label NIfTI files and labels JSON files.

        Returns ``(segmentations, data)`` aligned with the requested relative paths
        (``labels/<uuid>/<uuid>/0.nii.gz`` or ``.../data.json``). The query only mints
        URLs, so it is idempotent and retried.
        """
        data = self._query(
            "presignUploadsSDK",
            {
                "orgId": org_id,
                "projectId": project_id,
                "filesData": list(data_files),
                "fileTypeData": "application/json",
                "fileEncodingData": "gzip",
                "filesSeg": list(segmentation_files),
                "fileTypeSeg": "application/octet-stream",
                "fileEncodingSeg": None,
            },
        )
        return list(data.get("presignSeg") or []), list(data.get("presignData") or [])

    def download(self, url: str, destination: Path) -> Path:
        """Stream a presigned GET URL to ``destination`` (atomic, retried)."""
        return self.transport.download(url, destination)

    def download_sha256(self, url: str, destination: Path) -> bytes:
        """:meth:`download`, returning the SHA-256 digest of the file (hashed as it streams)."""
        return self.transport.download_sha256(url, destination)

    def upload(
        self, url: str, data: bytes, *, content_type: str, content_encoding: str | None = None
    ) -> None:
        """PUT bytes to a presigned URL (sent once)."""
        self.transport.upload(
            url, data, content_type=content_type, content_encoding=content_encoding
        )

    # -- labels and workflow -------------------------------------------------------------

    def validate_and_convert(
        self, tasks: Sequence[Mapping[str, Any]], storage_id: str
    ) -> ConvertResult:
        """``validateAndConvertToImportFormatSDK``: the server converts ``series`` tasks.

        A pure function on the server (nothing is stored), hence a retried query. The
        caller decodes ``converted`` (a JSON string: tasks with ``labels``, ``labelsMap``,
        ``seriesInfo`` in input order).
        """
        data = self._query(
            "validateAndConvertToImportFormatSDK",
            {"original": json.dumps(list(tasks)), "convert": True, "storageId": storage_id},
        )
        result = data.get("validateAndConvertToImportFormat") or {}
        return ConvertResult(
            isValid=bool(result.get("isValid")),
            error=result.get("error"),
            converted=result.get("converted"),
        )

    def put_task_and_labels(
        self,
        org_id: str,
        project_id: str,
        *,
        stage_name: str,
        task_id: str,
        finished: bool,
        labels_data: str | None,
        labels_map: Sequence[LabelMapEntry | None],
        labels_data_path: str | None = None,
    ) -> None:
        """``putTaskAndLabelsSDK``: save labels as a draft (``finished=False``) or submit.

        The server checks that the task is queued in ``stage_name`` and assigned to the key
        (else :class:`TaskStateError`). Sent once.
        """
        self._mutate(
            "putTaskAndLabelsSDK",
            {
                "orgId": org_id,
                "projectId": project_id,
                "stageName": stage_name,
                "taskId": task_id,
                "elapsedTimeMs": 0,
                "finished": finished,
                "labelsData": labels_data,
                "labelsDataPath": labels_data_path,
                "labelsMap": list(labels_map),
            },
        )

    def put_labeling_task(
        self, org_id: str, project_id: str, *, stage_name: str, task_id: str
    ) -> None:
        """``putLabelingTaskSDK``: submit a Label-stage task with its existing labels."""
        self._mutate(
            "putLabelingTaskSDK",
            {"orgId": org_id, "projectId": project_id, "stageName": stage_name, "taskId": task_id},
        )

    def put_review_task(
        self,
        org_id: str,
        project_id: str,
        *,
        stage_name: str,
        task_id: str,
        accept: bool,
        comment: str | None = None,
        comment_pin: Mapping[str, Any] | None = None,
    ) -> None:
        """``putReviewTaskSDK``: accept (``accept=True``) or reject a task in a Review stage."""
        self._mutate(
            "putReviewTaskSDK",
            {
                "orgId": org_id,
                "projectId": project_id,
                "stageName": stage_name,
                "taskId": task_id,
                "reviewVal": accept,
                "comment": comment,
                "commentPin": dict(comment_pin) if comment_pin else None,
                "elapsedTimeMs": 0,
            },
        )

    def move_task_to_start(self, org_id: str, project_id: str, task_id: str) -> None:
        """``moveTaskToStartSDK``: send a Ground Truth task back to the first Label stage."""
        self._mutate(
            "moveTaskToStartSDK", {"orgId": org_id, "projectId": project_id, "taskId": task_id}
        )

    def assign_tasks(
        self,
        org_id: str,
        project_id: str,
        task_ids: Sequence[str],
        *,
        emails: Sequence[str] | None,
        refresh: bool = True,
    ) -> list[AssignedTask]:
        """``assignTasksMultipleUsersSDK``: assign tasks in their current stage.

        ``emails=None`` unassigns. An API key is addressed by its user id (``API:<uuid>``).
        ``currentUser`` is always sent ``False``, as SDK 2.x does.
        """
        data = self._mutate(
            "assignTasksMultipleUsersSDK",
            {
                "orgId": org_id,
                "projectId": project_id,
                "taskIds": list(task_ids),
                "emails": list(emails) if emails is not None else None,
                "currentUser": False,
                "refresh": refresh,
            },
        )
        return list(data.get("assignTasksMultipleUsers") or [])

    def update_tasks_priorities(
        self, org_id: str, project_id: str, tasks: Sequence[Mapping[str, Any]]
    ) -> None:
        """``updateTasksPrioritiesSDK``: set ``[{"taskId", "priority" (0..1), "user"?}]``.

        Setting a value is idempotent, so the call is retried like a query. An answer
        with a ``message`` (the SDK logs it as an error) raises :class:`PlatformError`.
        """
        operation = "updateTasksPrioritiesSDK"
        variables = {"orgId": org_id, "projectId": project_id, "tasks": [dict(t) for t in tasks]}
        data = self.transport.execute(
            operation, documents.DOCUMENTS[operation], variables, idempotent=True
        )
        message = (data.get("updateTasksPriorities") or {}).get("message")
        if message:
            raise PlatformError(
                f"RedBrick refused the task priorities: {message}", operation=operation
            )

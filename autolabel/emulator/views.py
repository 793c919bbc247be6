"""Stored records as the JSON objects the GraphQL schema returns (protocol §2).

The views are plain dicts; graphql-core picks the selected fields. Fields whose value
depends on an argument (``items(presigned:)``, ``labelsMap(presigned:)``) are resolved in
:mod:`autolabel.emulator.resolvers`. Union members carry ``__typename``.
"""

from __future__ import annotations

import json
from typing import Any

from autolabel.emulator.entities import LabelRecord, ProjectRecord, TaskRecord, UserRecord
from autolabel.emulator.stages import consensus_enabled
from autolabel.emulator.store import Store


def user_view(user: UserRecord | None, *, caller_id: str | None = None) -> dict[str, Any] | None:
    """A ``User`` object (API keys have an empty email and the key name as givenName)."""
    if user is None:
        return None
    return {
        "userId": user.user_id,
        "email": user.email,
        "givenName": user.given_name,
        "familyName": user.family_name,
        "mfaSetup": False,
        "lastSeen": None,
        "updatedAt": None,
        "idProvider": "API_KEY" if user.is_api_key else "EMAIL",
        "loggedInUser": caller_id == user.user_id if caller_id else None,
    }


def _routing(routing: dict[str, Any] | None) -> dict[str, Any]:
    routing = dict(routing or {})
    if "nextStageName" in routing:
        kind = "NextRouting"
    elif "passed" in routing or "failed" in routing:
        kind = "BooleanRouting"
    elif "feedbackStageName" in routing:
        kind = "FeedbackRouting"
    elif "stageNames" in routing:
        kind = "MultiRouting"
    else:
        kind = "NoRouting"
        routing = {"placeholder": None}
    return {"__typename": kind, **routing}


def stages_view(project: ProjectRecord) -> list[dict[str, Any]]:
    """The project's stages with ``stageConfig`` as a JSON string and a typed routing."""
    return [
        {
            "stageName": stage["stageName"],
            "brickName": stage["brickName"],
            "stageConfig": json.dumps(stage.get("stageConfig") or {}),
            "routing": _routing(stage.get("routing")),
        }
        for stage in project.stages
    ]


def taxonomy_view(project: ProjectRecord) -> dict[str, Any]:
    """The full V2 taxonomy object (V1 fields empty)."""
    taxonomy = dict(project.taxonomy)
    taxonomy.setdefault("orgId", project.org_id)
    for key in ("categories", "attributes", "taskCategories", "taskAttributes", "colorMap"):
        taxonomy.setdefault(key, None)
    for key in ("studyClassify", "seriesClassify", "instanceClassify", "objectTypes"):
        taxonomy.setdefault(key, [])
    taxonomy.setdefault("isNew", True)
    taxonomy.setdefault("archived", False)
    taxonomy.setdefault("version", 1)
    taxonomy.setdefault("createdAt", project.created_at)
    return taxonomy


#: The statuses a project can have, as redbrick/project.py reads them: ``CREATING`` (the SDK
#: waits), ``CREATION_SUCCESS``, ``CREATION_FAILURE``, ``REMOVING`` (archived).
PROJECT_STATUSES = ("CREATING", "CREATION_SUCCESS", "CREATION_FAILURE", "REMOVING")


def project_status_key(project_id: str) -> str:
    """The ``meta`` key that holds a project's status when it is not ``CREATION_SUCCESS``."""
    return f"project_status:{project_id}"


def project_view(
    project: ProjectRecord, base_url: str, *, status: str = "CREATION_SUCCESS"
) -> dict[str, Any]:
    """The ``project`` object of ``getProjectSDK`` / ``sdkGetProjectNameSDK``."""
    return {
        "orgId": project.org_id,
        "projectId": project.project_id,
        "name": project.name,
        "desc": "",
        "status": status,
        "tdType": project.td_type,
        "taxonomy": taxonomy_view(project),
        "projectUrl": f"{base_url.rstrip('/')}/{project.org_id}/projects/{project.project_id}",
        "createdAt": project.created_at,
        "updatedAt": project.updated_at,
        "consensusSettings": {"enabled": consensus_enabled(project)},
        "workspace": None,
        "stages": stages_view(project),
    }


def labels_view(store: Store, labels: LabelRecord | None) -> dict[str, Any] | None:
    """A ``TaskData`` object for a saved labels version."""
    if labels is None:
        return None
    return {
        "tdId": labels.td_id,
        "createdAt": labels.created_at,
        "createdByEntity": user_view(store.user(labels.created_by)),
        "labelsData": labels.labels_data,
        "labelsDataPath": labels.labels_data_path,
        "labelsStorage": {"storageId": labels.storage_id},
        # The stored entries of the label files, as kept by workflow.stored_labels_map:
        # ``imageIndex`` only (redbrick/export/public.py maps it to a series through the
        # series' ``itemsIndices``); entries without a file are not answered.
        "labelsMap": [
            {
                "seriesIndex": entry.get("seriesIndex"),
                "imageIndex": entry.get("imageIndex"),
                "labelName": entry["labelName"],
            }
            for entry in labels.labels_map
            if entry and entry.get("labelName")
        ],
        # the legacy LegacyTaskData fields
        "subName": None,
        "taskType": "LABEL",
        "createdBy": labels.created_by,
    }


def _series_view(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": info.get("name"),
        "itemsIndices": info.get("itemsIndices"),
        "dataType": info.get("dataType"),
        "metaData": info.get("metaData"),
        "imageHeaders": info.get("imageHeaders"),
        "localToWorldTransform": None,
    }


def _consensus_parts(store: Store, task: TaskRecord) -> list[dict[str, Any]]:
    """The other labelers' sub-tasks of a consensus task, each with its own labels.

    Follows redbrick/utils/rb_label_utils.py ``flat_rb_format``: ``currentStageSubTask`` is
    the first labeler's part and ``subTasks`` the others', each a ``LabelingTask`` with
    ``assignedTo``, ``state`` and ``taskData`` (that labeler's latest labels)."""
    parts = []
    for sub in store.sub_tasks(task.task_id, task.stage_name):
        user = store.user(sub["user_id"])
        parts.append(
            {
                "__typename": "LabelingTask",
                "state": sub["state"],
                "assignedTo": user_view(user),
                "assignedAt": sub["assigned_at"],
                "progressSavedAt": None,
                "completedAt": None,
                "completionTimeMs": None,
                "subTasks": [],
                "taskData": labels_view(
                    store, store.latest_labels_by(task.task_id, sub["user_id"])
                ),
                "overallConsensusScore": None,
                "consensusInfo": [],
            }
        )
    return parts


def task_view(store: Store, task: TaskRecord) -> dict[str, Any]:
    """A ``Task`` object with its datapoint, current sub-task and latest labels."""
    latest = labels_view(store, store.latest_labels(task.task_id))
    assignee = store.user(task.assigned_to) if task.assigned_to else None
    parts = _consensus_parts(store, task)
    own = latest
    if parts:  # a consensus task: the first labeler's part carries that labeler's labels
        mine = store.latest_labels_by(task.task_id, task.assigned_to) if task.assigned_to else None
        own = labels_view(store, mine)
    sub_task: dict[str, Any] = {
        "__typename": "LabelingTask",
        "state": task.state,
        "assignedTo": user_view(assignee),
        "assignedAt": task.assigned_at,
        "progressSavedAt": task.progress_saved_at,
        "completedAt": task.completed_at,
        "completionTimeMs": None,
        "subTasks": parts,
        "taskData": own,
        "overallConsensusScore": None,
        "consensusInfo": [],
    }
    return {
        "taskId": task.task_id,
        "dpId": task.dp_id,
        "name": task.name,
        "currentStageName": task.stage_name,
        "createdAt": task.created_at,
        "updatedAt": task.updated_at,
        "priority": task.priority,
        "datapoint": {
            "dpId": task.dp_id,
            "name": task.name,
            "items": task.items,
            "createdAt": task.created_at,
            "createdByEntity": user_view(store.user(task.created_by)),
            "metaData": task.meta_data,
            "seriesInfo": [_series_view(s) for s in task.series_info],
            "heatMaps": [],
            "transforms": [],
            "centerline": [],
            "storageMethod": {"storageId": task.storage_id},
            "attributes": None,
            "archived": False,
            "cohorts": [],
            "dataType": "DICOM3D" if len(task.items) > 1 else "NIFTI",
        },
        "currentStageSubTask": sub_task,
        "latestTaskData": latest,
        # the legacy LegacyLabelingTask fields
        "orgId": None,
        "projectId": task.project_id,
        "stageName": task.stage_name,
        "state": task.state,
        "taskType": "LABEL",
        "completionTimeMs": None,
        "progressSavedAt": task.progress_saved_at,
        "assignedTo": user_view(assignee),
        "taskData": latest,
    }

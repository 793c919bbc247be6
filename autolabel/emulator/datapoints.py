"""Creating tasks: ``createDatapoint`` over the API, and the seeder's direct path.

A new task gets a datapoint (its items and ``seriesInfo``), optional pre-labels, and
starts in the first label stage (or in Ground Truth with ``ground_truth=True``). Names are
unique per project. ``pre_assign`` maps stage names to a user (email or user id), as the
``preAssign`` field of an import does.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from autolabel.emulator.entities import LabelRecord, ProjectRecord, TaskRecord, utc_now
from autolabel.emulator.stages import GROUND_TRUTH, RuleViolation, first_label_stage
from autolabel.emulator.store import Store
from autolabel.emulator.workflow import attempt

#: RedBrick's well-known storage ids (protocol §2.0).
REDBRICK_STORAGE = "22222222-2222-2222-2222-222222222222"


def new_task(
    store: Store,
    project: ProjectRecord,
    *,
    name: str,
    items: list[str],
    series_info: list[dict[str, Any]],
    created_by: str,
    storage_id: str = REDBRICK_STORAGE,
    meta_data: str | None = None,
    priority: float | None = None,
    ground_truth: bool = False,
    pre_assign: dict[str, str] | None = None,
    labels_data: str | None = None,
    labels_data_path: str | None = None,
    labels_map: list[dict[str, Any] | None] | None = None,
) -> TaskRecord:
    """Create one task (no event is recorded; see :func:`create_datapoint`)."""
    if not name:
        raise RuleViolation("A task needs a non-empty name")
    if not items:
        raise RuleViolation(f"Task {name}: a datapoint needs at least one item")
    stage = GROUND_TRUTH if ground_truth else first_label_stage(project)
    assignee = None
    wanted = (pre_assign or {}).get(stage)
    if wanted:
        user = store.user(wanted)
        if user is None or user.org_id != project.org_id:
            raise RuleViolation(f"Task {name}: preAssign user {wanted} is not an org member")
        assignee = user.user_id
    now = utc_now()
    task = TaskRecord(
        task_id=str(uuid.uuid4()),
        project_id=project.project_id,
        dp_id=str(uuid.uuid4()),
        name=name,
        items=list(items),
        series_info=series_info,
        storage_id=storage_id,
        meta_data=meta_data,
        priority=priority,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        stage_name=stage,
        state="COMPLETED" if ground_truth else ("ASSIGNED" if assignee else "UNASSIGNED"),
        assigned_to=assignee,
        assigned_at=now if assignee else None,
        progress_saved_at=None,
        completed_at=now if ground_truth else None,
        review_state=None,
    )
    with store.transaction():
        try:
            store.add_task(task)
        except sqlite3.IntegrityError:
            raise RuleViolation(
                f"Task with name {name} already exists in project {project.project_id}"
            ) from None
        has_labels = labels_data_path or any(labels_map or []) or (labels_data or "[]") != "[]"
        if has_labels:
            store.add_labels(
                LabelRecord(
                    td_id=str(uuid.uuid4()),
                    task_id=task.task_id,
                    stage_name=stage,
                    labels_data=labels_data or "[]",
                    labels_data_path=labels_data_path,
                    labels_map=list(labels_map or []),
                    storage_id=storage_id,
                    created_by=created_by,
                    created_at=now,
                    finished=True,
                )
            )
    return task


def parse_pre_assign(raw: str | None) -> dict[str, str]:
    """The ``preAssign`` argument (JSON text, ``"null"`` when absent) as stage -> user."""
    if not raw:
        return {}
    value = json.loads(raw)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RuleViolation("preAssign must be a JSON object of stage name: email")
    return {str(k): (v[0] if isinstance(v, list) and v else str(v)) for k, v in value.items()}


def create_datapoint(
    store: Store,
    caller_id: str,
    project: ProjectRecord,
    args: dict[str, Any],
    *,
    item_exists: Any,
) -> TaskRecord:
    """``createDatapoint``: check the uploaded items, then create the task (recorded)."""
    storage_id = str(args["storageId"])
    items = [str(i) for i in args["items"]]
    if storage_id == REDBRICK_STORAGE:
        missing = [i for i in items if not item_exists(i)]
        if missing:
            raise RuleViolation(f"Task {args['name']}: items not uploaded: {', '.join(missing)}")
    series_info = []
    for entry in args.get("seriesInfo") or []:
        info = dict(entry)
        for key in ("metaData", "imageHeaders"):
            if isinstance(info.get(key), str):
                info[key] = json.loads(info[key])
        series_info.append(info)
    caller = store.user(caller_id)
    if caller is None:
        raise RuleViolation(f"Unknown user {caller_id}")

    def action() -> TaskRecord:
        return new_task(
            store,
            project,
            name=str(args["name"]),
            items=items,
            series_info=series_info or [{"name": None, "itemsIndices": list(range(len(items)))}],
            created_by=caller_id,
            storage_id=storage_id,
            meta_data=args.get("metaData"),
            priority=args.get("priority"),
            ground_truth=bool(args.get("isGroundTruth")),
            pre_assign=parse_pre_assign(args.get("preAssign")),
            labels_data=args.get("labelsData"),
            labels_data_path=args.get("labelsDataPath"),
            labels_map=args.get("labelsMap"),
        )

    return attempt(store, "createDatapoint", caller, action, task_id=None, stage_name=None)

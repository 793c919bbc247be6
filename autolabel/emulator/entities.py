"""The emulator's stored entities as frozen dataclasses, and how they map to SQLite rows."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what the API returns for timestamps)."""
    return datetime.now(timezone.utc).isoformat()


def key_digest(api_key: str) -> str:
    """SHA-256 hex of an API key: the only form in which keys are stored."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UserRecord:
    """A member of an org: a human (email) or an API key (``API:<uuid>``, empty email)."""

    user_id: str
    org_id: str
    email: str
    given_name: str
    family_name: str
    role: str

    @property
    def is_api_key(self) -> bool:
        """True for API-key users."""
        return self.user_id.startswith("API:")


@dataclass(frozen=True)
class ProjectRecord:
    """A project with its stages (SDK ``stages`` shape) and V2 taxonomy, as stored."""

    project_id: str
    org_id: str
    name: str
    td_type: str
    taxonomy: dict[str, Any]
    stages: list[dict[str, Any]]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class TaskRecord:
    """One task: its datapoint (items, series) and where it stands in the workflow.

    ``stage_name`` is a stage of the project, ``"END"`` (Ground Truth) or ``"ARCHIVED"``;
    ``state`` is one of RedBrick's ``TaskStates``; ``assigned_to`` a user id or None.
    """

    task_id: str
    project_id: str
    dp_id: str
    name: str
    items: list[str]
    series_info: list[dict[str, Any]]
    storage_id: str
    meta_data: str | None
    priority: float | None
    created_by: str
    created_at: str
    updated_at: str
    stage_name: str
    state: str
    assigned_to: str | None
    assigned_at: str | None
    progress_saved_at: str | None
    completed_at: str | None
    review_state: str | None


@dataclass(frozen=True)
class LabelRecord:
    """One saved version of a task's labels (the newest is the task's latest)."""

    td_id: str
    task_id: str
    stage_name: str
    labels_data: str
    labels_data_path: str | None
    labels_map: list[dict[str, Any] | None]
    storage_id: str
    created_by: str
    created_at: str
    finished: bool


@dataclass(frozen=True)
class EventRecord:
    """One write attempt: accepted or refused (then ``message`` says why)."""

    seq: int
    task_id: str | None
    operation: str
    stage_name: str | None
    user_id: str | None
    finished: bool | None
    review_val: bool | None
    accepted: bool
    message: str | None
    at: str


def opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def user_from_row(row: sqlite3.Row) -> UserRecord:
    return UserRecord(
        user_id=str(row["user_id"]),
        org_id=str(row["org_id"]),
        email=str(row["email"]),
        given_name=str(row["given_name"]),
        family_name=str(row["family_name"]),
        role=str(row["role"]),
    )


def project_from_row(row: sqlite3.Row) -> ProjectRecord:
    return ProjectRecord(
        project_id=str(row["project_id"]),
        org_id=str(row["org_id"]),
        name=str(row["name"]),
        td_type=str(row["td_type"]),
        taxonomy=json.loads(row["taxonomy"]),
        stages=json.loads(row["stages"]),
        created_at=str(row["created_at"]),
        updated_at=str(row["updated_at"]),
    )


def task_from_row(row: sqlite3.Row) -> TaskRecord:
    values = dict(row)
    values.pop("seq")
    values["items"] = json.loads(values["items"])
    values["series_info"] = json.loads(values["series_info"])
    return TaskRecord(**values)


def labels_from_row(row: sqlite3.Row) -> LabelRecord:
    values = dict(row)
    values.pop("seq")
    values["labels_map"] = json.loads(values["labels_map"])
    values["finished"] = bool(values["finished"])
    return LabelRecord(**values)

"""Value types of the RedBrick client: wire shapes (TypedDict) and parsed records (dataclasses).

Wire shapes mirror the JSON of redbrick-protocol.md §2; the dataclasses are what the rest of
autolabel sees. Parsing is lenient about absent optional keys and strict about the ones
the pipeline depends on (``taskId``, the stage name).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypedDict

#: RedBrick's own storage (label uploads, direct item uploads).
REDBRICK_STORAGE_ID = "22222222-2222-2222-2222-222222222222"
#: Items that are public URLs.
PUBLIC_STORAGE_ID = "11111111-1111-1111-1111-111111111111"
#: The Ground Truth pseudo-stage of tasks that finished the workflow.
GROUND_TRUTH_STAGE = "END"


class TaskFilters(str, Enum):
    """The ``search`` values of ``export.list_tasks`` (the SDK's ``redbrick.TaskFilters``)."""

    ALL = "ALL"
    GROUNDTRUTH = "GROUNDTRUTH"
    UNASSIGNED = "UNASSIGNED"
    QUEUED = "QUEUED"
    DRAFT = "DRAFT"
    SKIPPED = "SKIPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ISSUES = "ISSUES"


def is_uuid(text: str) -> bool:
    """True when ``text`` is a UUID: the form of every RedBrick id the API takes
    (``orgId``, ``projectId``, ``taskId``: ``UUID!`` in the GraphQL schema)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class TaskStates(str, Enum):
    """State of a task in its current stage (``currentStageSubTask.state``)."""

    UNASSIGNED = "UNASSIGNED"
    ASSIGNED = "ASSIGNED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    PROBLEM = "PROBLEM"
    SKIPPED = "SKIPPED"
    STAGED = "STAGED"


class LabelMapEntry(TypedDict, total=False):
    """``LabelMapInput`` / stored ``labelsMap[]``: the label file of one series."""

    labelName: str | None
    seriesIndex: int | None
    imageIndex: int | None


@dataclass(frozen=True, slots=True)
class ListingError:
    """A field error of a task listing: the listing went on without that part.

    ``task_id`` is the id of the entry the error hit, when the entry survived (its other
    fields may be null); None when the server answered the whole entry null."""

    operation: str
    message: str
    task_id: str | None


class LabelStorage(TypedDict):
    """``getLabelStorage``: where uploaded label files live."""

    storageId: str
    path: str


class PresignedUpload(TypedDict):
    """One entry of ``presignUploads``."""

    presignedUrl: str
    filePath: str
    fileName: str


class AssignedTask(TypedDict):
    """One entry of ``assignTasksMultipleUsers``."""

    taskId: str
    name: str
    stageName: str


class ConvertResult(TypedDict):
    """``validateAndConvertToImportFormat``; ``converted`` is a JSON string."""

    isValid: bool
    error: str | None
    converted: str | None


def json_field(value: Any) -> Any:
    """A JSON-string field (``metaData``, ``stageConfig``, ``labelsData``) decoded; ``None`` stays."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except ValueError:
            return value
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class Stage:
    """One stage of the project's workflow (``project.stages[]``).

    ``brick_name`` is ``manual-labeling`` for a Label stage, ``expert-review`` for a Review
    stage, ``labelset-output`` for Ground Truth; ``routing`` is the selected union member
    (``nextStageName``, ``passed``/``failed``, ``feedbackStageName``...).
    """

    stage_name: str
    brick_name: str
    config: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)

    @property
    def is_label(self) -> bool:
        """True for a Label stage (``put_tasks`` of ``project.labeling`` applies)."""
        return self.brick_name == "manual-labeling"

    @property
    def is_review(self) -> bool:
        """True for a Review stage (``put_tasks`` of ``project.review`` applies)."""
        return self.brick_name == "expert-review"

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Stage:
        """Parse one ``stages[]`` entry of ``getProjectSDK``."""
        config = json_field(raw.get("stageConfig"))
        return cls(
            stage_name=str(raw["stageName"]),
            brick_name=str(raw.get("brickName") or ""),
            config=config if isinstance(config, dict) else {},
            routing=dict(raw.get("routing") or {}),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Series:
    """One series of a task: its name, its items (stored paths) and metadata, in task order."""

    index: int
    name: str | None
    items: tuple[str, ...]
    data_type: str | None = None
    meta_data: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Labels:
    """The latest labels of a task (``latestTaskData``): internal label objects and files.

    ``labels`` is the decoded ``labelsData`` (§4.5 objects); when ``labels_data_path`` is
    set, that stored JSON file holds the labels and ``labels`` is empty (read it with
    ``Project.stored_labels``). ``labels_map`` has one entry per stored label file, as the
    server answers it (often ``imageIndex`` only); ``files`` is the label file of each
    series index, placed as the SDK places them (:func:`series_of_label_files`).
    ``created_by`` is the user id that wrote them (``API:<uuid>`` for an API key).
    """

    labels: list[dict[str, Any]]
    labels_map: list[LabelMapEntry]
    labels_data_path: str | None
    storage_id: str | None
    created_by: str | None
    created_at: str | None
    files: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class SubTask:
    """One labeler's part of a consensus task in its current stage.

    ``labels`` are that labeler's own latest labels, when the read selected them (the
    consensus read of ``Project.get_task``); None otherwise or when there are none."""

    user_id: str | None
    email: str | None
    state: str | None
    labels: Labels | None = None


#: How long the item URLs a task was read with are used for its download. The SDK's task
#: reads ask for them (``itemsPresigned: items(presigned: true)``, redbrick/repo/shards.py)
#: and downloads from them (redbrick/utils/rb_dicom_utils.py); past this, or for a
#: listing, the items are presigned again (``presignItemsSDK``) so that no URL has expired.
ITEM_URLS_FRESH_S = 60.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Task:
    """A task as the pipeline sees it.

    ``series`` lists the series in the task's order. Each series' ``items`` are stored paths
    (or public URLs): use ``Project.download_items`` to get files. Tasks read by listing
    (``genericTasks``) carry no items and no labels: ``items_loaded`` is False for them.
    ``assignee`` is the user id (or email) the task is assigned to in its current stage.
    """

    task_id: str
    name: str
    stage_name: str
    state: str | None
    assignee: str | None
    assignee_email: str | None
    storage_id: str | None
    series: tuple[Series, ...]
    items: tuple[str, ...]
    items_loaded: bool
    labels: Labels | None
    meta_data: dict[str, Any] | None
    priority: float | None
    updated_at: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    sub_tasks: tuple[SubTask, ...] = ()
    items_presigned: tuple[str | None, ...] = field(default=(), repr=False, compare=False)
    read_at: float = field(default_factory=time.monotonic, repr=False, compare=False)

    def item_urls(self, max_age_s: float = ITEM_URLS_FRESH_S) -> list[str | None] | None:
        """The GET URLs the read came with (``itemsPresigned``, aligned with ``items``),
        while the read is at most ``max_age_s`` old; ``None`` when the task must be
        presigned again (a listing, an old read, or any item without a URL)."""
        fresh = time.monotonic() - self.read_at <= max_age_s
        urls = self.items_presigned
        if not fresh or not self.items or len(urls) != len(self.items) or not all(urls):
            return None
        return list(urls)

    @property
    def is_consensus(self) -> bool:
        """True when several labelers each label the task in their own sub-task."""
        return bool(self.sub_tasks)

    def part_of(self, user_id: str) -> SubTask | None:
        """``user_id``'s own sub-task of a consensus task, or None."""
        return next((p for p in self.sub_tasks if p.user_id == user_id), None)

    def labels_of(self, user_id: str) -> Labels | None:
        """The labels that ``user_id`` would replace by writing: in a consensus task its own
        sub-task's, else the task's latest (``labels``)."""
        if not self.sub_tasks:
            return self.labels
        part = self.part_of(user_id)
        return part.labels if part is not None else None

    @property
    def is_ground_truth(self) -> bool:
        """True when the task finished the workflow (stage ``END``)."""
        return self.stage_name == GROUND_TRUTH_STAGE

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Task:
        """Parse a ``task`` / ``tasksPaged`` entry (with items) or a ``genericTasks`` entry."""
        datapoint = raw.get("datapoint") or {}
        subtask = raw.get("currentStageSubTask") or {}
        assigned = subtask.get("assignedTo") or {}
        loaded = "items" in datapoint
        items = tuple(str(i) for i in (datapoint.get("items") or []))
        presigned = datapoint.get("itemsPresigned")
        latest = raw.get("latestTaskData")
        storage = (datapoint.get("storageMethod") or {}).get("storageId")
        meta = json_field(datapoint.get("metaData"))
        return cls(
            task_id=str(raw["taskId"]),
            name=str(datapoint.get("name") or raw.get("name") or ""),
            stage_name=str(raw.get("currentStageName") or ""),
            state=subtask.get("state"),
            assignee=assigned.get("userId"),
            assignee_email=assigned.get("email"),
            storage_id=storage,
            series=_series(datapoint.get("seriesInfo"), items),
            items=items,
            items_loaded=loaded,
            labels=(
                _labels(latest, datapoint.get("seriesInfo") or [], len(items))
                if isinstance(latest, dict)
                else None
            ),
            meta_data=meta if isinstance(meta, dict) else None,
            priority=raw.get("priority"),
            updated_at=raw.get("updatedAt"),
            raw=raw,
            sub_tasks=_sub_tasks(subtask, datapoint.get("seriesInfo") or [], len(items)),
            items_presigned=(
                tuple(str(u) if u else None for u in presigned)
                if isinstance(presigned, list)
                else ()
            ),
        )


def _sub_tasks(current: dict[str, Any], series_info: list[Any], count: int) -> tuple[SubTask, ...]:
    """The labelers of a consensus task, as redbrick/utils/rb_label_utils.py
    ``flat_rb_format`` reads them: ``currentStageSubTask`` first, then its ``subTasks``;
    empty when there are no ``subTasks`` (not a consensus task)."""
    others = [s for s in current.get("subTasks") or [] if isinstance(s, dict)]
    if not others:
        return ()
    parts = []
    for part in [current, *others]:
        who = part.get("assignedTo") or {}
        data = part.get("taskData")
        parts.append(
            SubTask(
                user_id=who.get("userId"),
                email=who.get("email"),
                state=part.get("state"),
                labels=_labels(data, series_info, count) if isinstance(data, dict) else None,
            )
        )
    return tuple(parts)


def _series(info: Any, items: tuple[str, ...]) -> tuple[Series, ...]:
    if not info:
        return (Series(index=0, name=None, items=items),) if items else ()
    out = []
    for index, entry in enumerate(info):
        meta = json_field(entry.get("metaData"))
        indices = entry.get("itemsIndices") or []
        out.append(
            Series(
                index=index,
                name=entry.get("name"),
                items=tuple(items[i] for i in indices if 0 <= i < len(items)),
                data_type=entry.get("dataType"),
                meta_data=meta if isinstance(meta, dict) else None,
            )
        )
    return tuple(out)


def series_of_label_files(
    labels_map: list[Any], series_info: list[Any], item_count: int
) -> dict[int, str]:
    """``{series index: labelName}`` of stored ``labelsMap`` entries, placed as the SDK does
    (redbrick/export/public.py ``process_labels``): by ``seriesIndex``, else by the series
    whose ``itemsIndices`` hold the entry's ``imageIndex`` (when the series' indices cover
    every item), else by the entry's position. Entries without a file are left out."""
    by_item: dict[int, int] = {}
    covered = sum(len(s.get("itemsIndices") or []) for s in series_info if isinstance(s, dict))
    if series_info and covered == item_count:
        for index, info in enumerate(series_info):
            by_item.update({int(i): index for i in info.get("itemsIndices") or []})
    out: dict[int, str] = {}
    for position, entry in enumerate(labels_map):
        if not isinstance(entry, dict) or not entry.get("labelName"):
            continue
        if entry.get("seriesIndex") is not None:
            index = int(entry["seriesIndex"])
        elif entry.get("imageIndex") is not None and int(entry["imageIndex"]) in by_item:
            index = by_item[int(entry["imageIndex"])]
        else:
            index = position
        out[index] = str(entry["labelName"])
    return out


def _labels(latest: dict[str, Any], series_info: list[Any], item_count: int) -> Labels:
    decoded = json_field(latest.get("labelsData"))
    creator = latest.get("createdByEntity") or {}
    labels_map = list(latest.get("labelsMap") or [])
    return Labels(
        labels=decoded if isinstance(decoded, list) else [],
        labels_map=labels_map,
        files=series_of_label_files(labels_map, series_info, item_count),
        labels_data_path=latest.get("labelsDataPath"),
        storage_id=(latest.get("labelsStorage") or {}).get("storageId"),
        created_by=creator.get("userId"),
        created_at=latest.get("createdAt"),
    )


def category_attributes(taxonomy: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each taxonomy category's attributes: ``{category: {attribute name: attrType}}``
    (Taxonomy V2 ``objectTypes``); what a segment of that category may carry."""
    return {
        str(ot.get("category")): {
            str(a.get("name")): str(a.get("attrType")) for a in ot.get("attributes") or []
        }
        for ot in taxonomy.get("objectTypes") or []
    }

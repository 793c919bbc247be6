"""``project.export``: listing, searching and exporting tasks, in the SDK's call shapes.

``list_tasks`` maps a ``search`` filter onto ``genericTasks`` exactly as SDK 2.35.4 does
(redbrick-protocol.md §2.6) and yields the same lightweight dicts. ``export_tasks`` yields
tasks with their series and latest labels as stored (internal label objects), and can
download the label files (``with_labels``) and images (``with_files``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel.files import task_folder
from autolabel.redbrick.types import GROUND_TRUTH_STAGE, Task, TaskFilters, json_field

if TYPE_CHECKING:
    from autolabel.redbrick.project import Project


def _user(entity: dict[str, Any] | None) -> str | None:
    """An assignee or creator as the SDK shows it: the email, or ``API Key - <name>``."""
    if not entity or not entity.get("userId"):
        return None
    if str(entity["userId"]).startswith("API:"):
        return f"API Key - {entity.get('givenName') or entity['userId']}"
    return str(entity.get("email") or entity["userId"])


def _assignee(subtask: dict[str, Any]) -> dict[str, Any] | None:
    user = _user(subtask.get("assignedTo"))
    if not user:
        return None
    out: dict[str, Any] = {"user": user, "status": subtask.get("state")}
    for wire, key in (
        ("assignedAt", "assignedAt"),
        ("progressSavedAt", "lastSavedAt"),
        ("completedAt", "completedAt"),
        ("completionTimeMs", "timeSpentMs"),
    ):
        if subtask.get(wire) is not None:
            out[key] = subtask[wire]
    return out


def format_list_entry(task: dict[str, Any]) -> dict[str, Any]:
    """A ``genericTasks`` entry in the shape ``list_tasks`` of the SDK yields."""
    datapoint = task.get("datapoint") or {}
    out: dict[str, Any] = {
        "taskId": task["taskId"],
        "name": datapoint.get("name"),
        "createdAt": task.get("createdAt"),
        "currentStageName": task.get("currentStageName"),
    }
    if datapoint.get("storageMethod"):
        out["storageId"] = datapoint["storageMethod"].get("storageId")
    if task.get("updatedAt"):
        out["updatedAt"] = task["updatedAt"]
    creator = _user(datapoint.get("createdByEntity"))
    if creator:
        out["createdBy"] = creator
    if task.get("priority"):
        out["priority"] = task["priority"]
    if datapoint.get("metaData"):
        out["metaData"] = json_field(datapoint["metaData"])
    series = []
    for info in datapoint.get("seriesInfo") or []:
        entry = {}
        if info.get("name"):
            entry["name"] = info["name"]
        if info.get("metaData"):
            entry["metaData"] = json_field(info["metaData"])
        series.append(entry)
    if any(series):
        out["series"] = series
    subtask = task.get("currentStageSubTask") or {}
    assignees = [_assignee(subtask)] + [_assignee(s) for s in subtask.get("subTasks") or []]
    if any(assignees):
        out["assignees"] = [a for a in assignees if a]
    return out


def segment_map(labels: list[dict[str, Any]], series_index: int) -> dict[str, Any]:
    """The ``segmentMap`` of one series from internal label objects (inverse of §4.5).

    Labels with ``dicom.instanceid`` whose ``volumeindex`` is this series (or unset) map
    ``str(instanceid)`` to ``{"category", "attributes": {name: value}}``.
    """
    out: dict[str, Any] = {}
    for label in labels:
        dicom = label.get("dicom")
        volume = label.get("volumeindex")
        if not isinstance(dicom, dict) or dicom.get("instanceid") is None:
            continue
        if volume is not None and volume != series_index:
            continue
        entry: dict[str, Any] = {"category": label.get("category")}
        attributes = {
            a["name"]: a.get("value")
            for a in label.get("attributes") or []
            if isinstance(a, dict) and a.get("name")
        }
        if attributes:
            entry["attributes"] = attributes
        out[str(dicom["instanceid"])] = entry
    return out


class Export:
    """Task listing and export (``project.export``)."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def __repr__(self) -> str:
        return f"Export(project_id={self.project.project_id!r})"

    def search_arguments(
        self,
        search: TaskFilters | str | None,
        stage_name: str | None,
        user_id: str | None,
        task_id: str | None,
        task_name: str | None,
        exact_match: bool,
        completed_at: tuple[float | None, float | None] | None,
    ) -> tuple[str | None, str | None, dict[str, Any]]:
        """``(stageName, taskSearch, manualLabelingFilters)`` for a ``list_tasks`` call (§2.6)."""
        if search is None:
            search = (
                TaskFilters.ALL
                if stage_name is None
                else (TaskFilters.QUEUED if completed_at is None else TaskFilters.COMPLETED)
            )
        try:
            search = TaskFilters(getattr(search, "value", search))
        except ValueError:
            raise ValueError(f"Invalid task filter: {search}") from None
        stages = self.project.stages
        label = [s.stage_name for s in stages if s.is_label]
        review = [s.stage_name for s in stages if s.is_review]
        first = (label + review + [self.project.output_stage_name])[0]
        filters: dict[str, Any] = {}
        if user_id:
            filters["userId"] = user_id
        text = task_name
        if task_id:
            filters["taskId"] = task_id
            text = task_id
        elif task_name and exact_match:
            text = '"' + task_name.strip('"') + '"'
        if search is TaskFilters.ALL:
            stage_name = None
            filters.pop("userId", None)
        elif search is TaskFilters.GROUNDTRUTH:
            stage_name = self.project.output_stage_name
            filters.pop("userId", None)
        elif search is TaskFilters.UNASSIGNED:
            stage_name = stage_name or first
            filters["userId"] = None
        elif search is TaskFilters.QUEUED:
            stage_name = stage_name or first
        elif search in (TaskFilters.DRAFT, TaskFilters.SKIPPED):
            stage_name = stage_name or first
            filters["status"] = "STAGED" if search is TaskFilters.DRAFT else "SKIPPED"
        elif search is TaskFilters.COMPLETED:
            stage_name = stage_name or first
            filters["recentlyCompleted"] = True
            for key, value in zip(
                ("completedAtFrom", "completedAtTo"), completed_at or (None, None), strict=True
            ):
                if value is not None:
                    filters[key] = datetime.fromtimestamp(value, tz=timezone.utc).isoformat()
        elif search is TaskFilters.FAILED:
            if not review:
                raise ValueError("The project has no Review stage, so no FAILED tasks")
            stage_name = stage_name if stage_name in review else review[0]
            filters["reviewState"] = "FAILED"
            filters.pop("userId", None)
        else:  # ISSUES
            stage_name = label[0] if label else first
            filters["status"] = "PROBLEM"
            filters.pop("userId", None)
        return stage_name, text, filters

    def list_tasks(
        self,
        *,
        search: TaskFilters | str | None = None,
        stage_name: str | None = None,
        user_id: str | None = None,
        task_id: str | None = None,
        task_name: str | None = None,
        exact_match: bool = False,
        completed_at: tuple[float | None, float | None] | None = None,
        limit: int | None = 50,
        concurrency: int = 10,
    ) -> Iterator[dict[str, Any]]:
        """Yield tasks matching a filter, ``limit`` at most (``None`` = all), as the SDK does.

        ``search`` defaults to ``ALL`` without ``stage_name`` and ``QUEUED`` with it;
        ``user_id`` (a user id or email; ``project.context.key_id`` for this key) narrows
        QUEUED/DRAFT/COMPLETED to that assignee; ``task_name`` is a prefix search, exact with
        ``exact_match=True``. ``concurrency`` is the page size. Entries:
        ``{"taskId", "name", "createdAt", "currentStageName", "storageId"?, "updatedAt"?,
        "createdBy"?, "priority"?, "metaData"?, "series"?, "assignees"?}``.
        """
        stage, text, filters = self.search_arguments(
            search, stage_name, user_id, task_id, task_name, exact_match, completed_at
        )
        p = self.project
        for task in p.client.list_tasks(
            p.org_id,
            p.project_id,
            stage_name=stage,
            task_search=text,
            filters=filters,
            page_size=max(1, concurrency),
            limit=limit,
        ):
            yield format_list_entry(task)

    def search_tasks(
        self, name: str, *, exact_match: bool = False, limit: int | None = 50
    ) -> Iterator[dict[str, Any]]:
        """Tasks whose name starts with ``name`` (or equals it, ``exact_match=True``), any stage."""
        return self.list_tasks(task_name=name, exact_match=exact_match, limit=limit)

    def export_tasks(
        self,
        *,
        only_ground_truth: bool = False,
        stage_name: str | None = None,
        task_id: str | None = None,
        from_timestamp: float | None = None,
        with_labels: bool = False,
        with_files: bool = False,
        destination: str | Path | None = None,
        concurrency: int = 10,
    ) -> Iterator[dict[str, Any]]:
        """Yield tasks with series, items and their latest labels.

        Entries: ``{"taskId", "name", "currentStageName", "status", "assignee", "storageId",
        "series": [{"name", "items", "metaData", "segmentMap", "segmentations"?}],
        "labels": [internal label objects], "labelsMap": [{"seriesIndex", "labelName"}],
        "updatedBy"}``. ``segmentMap`` maps each instance id of the series' label file to
        ``{"category", "attributes"}`` as in the series format. With ``with_labels`` each
        stored label file is downloaded to ``<destination>/segmentations/<task id>/<n>.nii.gz``,
        set as the series' ``segmentations`` and in ``labelsMap``; with ``with_files`` the images
        go to ``<destination>/images/<task id>/`` and ``series[].items`` become local paths. A
        Datasets (AltaDB) series comes as its parts (``altadb-N/``: manifest, metadata with
        the DICOM headers, frame files; :func:`autolabel.imaging.from_altadb_instance` makes
        DICOM files of them), and its ``items`` are those folders.

        Folders are named by task id (:func:`autolabel.files.task_folder`), where SDK 2.35.4
        uses the sanitised task name: two tasks never share a folder, and no name
        (absolute, climbing with ``..``, overlong) writes outside ``destination``.
        """
        p = self.project
        if task_id:
            raws: Iterator[dict[str, Any]] = iter(
                [p.client.get_task(p.org_id, p.project_id, task_id)]
            )
        else:
            since = (
                datetime.fromtimestamp(from_timestamp, tz=timezone.utc).isoformat()
                if from_timestamp is not None
                else None
            )
            stage = GROUND_TRUTH_STAGE if only_ground_truth else stage_name
            raws = p.client.tasks_paged(
                p.org_id,
                p.project_id,
                stage_name=stage,
                cache_time=since,
                page_size=max(1, concurrency),
            )
        folder = Path(destination or p.project_id)
        for raw in raws:
            task = Task.from_wire(raw)
            labels = task.labels
            stored = p.stored_labels(task)
            out: dict[str, Any] = {
                "taskId": task.task_id,
                "name": task.name,
                "currentStageName": task.stage_name,
                "status": task.state,
                "assignee": task.assignee_email or task.assignee,
                "storageId": task.storage_id,
                "series": [
                    {
                        "name": s.name,
                        "items": list(s.items),
                        "metaData": s.meta_data,
                        "segmentMap": segment_map(stored, s.index),
                    }
                    for s in task.series
                ],
                "labels": stored,
                "labelsMap": [dict(m) for m in labels.labels_map] if labels else [],
                "updatedBy": labels.created_by if labels else None,
            }
            if with_labels and labels:
                files = p.download_labels(task, task_folder(folder / "segmentations", task.task_id))
                local_of = {labels.files[i]: str(path) for i, path in files.items()}
                for entry in out["labelsMap"]:
                    local = local_of.get(str(entry.get("labelName")))
                    if local is not None:
                        entry["labelName"] = local
                for index, series in enumerate(out["series"]):
                    if index in files:
                        series["segmentations"] = str(files[index])
            if with_files:
                downloaded = p.download_items(
                    task, task_folder(folder / "images", task.task_id), presign=True
                )
                for series, got in zip(out["series"], downloaded, strict=False):
                    series["items"] = [str(path) for path in got.paths] or sorted(
                        {str(f.parent) for i in got.instances for f in i.frames}
                    )
            yield out

"""Writing labels to RedBrick: the ``put_tasks`` flow of redbrick-protocol.md §4.

For each task with a ``series`` list:

1. the server converts the series format (``validateAndConvertToImportFormat``), in batches;
2. each series' label file is uploaded as it is: ``presignUploads`` then ``PUT`` (the
   client never parses NIfTI; a series with several files or binary masks must be merged
   into one label map first, with :mod:`autolabel.imaging`);
3. more than 1000 label objects go to storage as gzip JSON (``labelsDataPath``), as the SDK does;
4. ``putManualLabelingTaskAndLabels`` saves a draft (``finished=False``) or submits.

:meth:`LabelWriter.upload` does steps 2-3 and :meth:`LabelWriter.commit` step 4, so that a
caller can re-check the task between the uploads and the one mutation that writes.

:class:`LabelWriter` raises per task; the facades turn that into the SDK's list of failed tasks.
"""

from __future__ import annotations

import copy
import gzip
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolabel.errors import ConversionError, GraphQLError
from autolabel.redbrick.client import RedBrickClient
from autolabel.redbrick.types import LabelMapEntry

#: Above this many label objects the SDK stores them as a file instead of inline (§3.2).
LABELS_ARRAY_LIMIT = 1000
_DUMMY_ITEMS = "https://test"


def for_conversion(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task as the converter expects it: dummy ``name``/``items``, no ``status`` (§2.11).

    ``put_tasks`` labels existing tasks, so names and items are irrelevant; the SDK replaces
    them so that validation never trips on them.
    """
    out = copy.deepcopy(dict(task))
    out.pop("status", None)
    out["name"] = "test"
    series = out.get("series")
    if not isinstance(series, list):
        series = [{}] if out.get("classification") else []
    out["series"] = [{**s, "name": "test", "items": _DUMMY_ITEMS} for s in series]
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ConvertedTask:
    """One task as the server converted it: internal ``labels``, positional ``labelsMap``."""

    task_id: str
    labels: list[dict[str, Any]] | None
    labels_map: list[dict[str, Any] | None]
    series_info: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadedLabels:
    """One task's labels with their files in storage, ready for the saving mutation."""

    task_id: str
    labels_data: str | None
    labels_map: list[LabelMapEntry | None]
    labels_data_path: str | None


class LabelWriter:
    """Converts, uploads and saves labels for tasks of one project."""

    def __init__(self, client: RedBrickClient, org_id: str, project_id: str) -> None:
        self.client = client
        self.org_id = org_id
        self.project_id = project_id

    def convert(self, tasks: Sequence[Mapping[str, Any]], storage_id: str) -> list[ConvertedTask]:
        """Convert a batch of ``series`` tasks on the server; :class:`ConversionError` if invalid."""
        result = self.client.validate_and_convert([for_conversion(t) for t in tasks], storage_id)
        if not result["isValid"]:
            raise ConversionError(
                f"RedBrick rejected the labels: {result['error'] or 'no reason given'}"
            )
        converted = json.loads(result["converted"] or "null")
        if not isinstance(converted, list) or len(converted) != len(tasks):
            raise GraphQLError(
                ["validateAndConvertToImportFormatSDK: converted tasks do not match the input"],
                operation="validateAndConvertToImportFormatSDK",
            )
        return [
            ConvertedTask(
                task_id=str(t.get("taskId") or source["taskId"]),
                labels=t.get("labels"),
                labels_map=list(t.get("labelsMap") or []),
                series_info=list(t.get("seriesInfo") or []),
            )
            for t, source in zip(converted, tasks, strict=True)
        ]

    def save(self, task: ConvertedTask, *, stage_name: str, finished: bool) -> None:
        """Upload the label files of ``task`` and save (draft) or submit its labels."""
        self.commit(self.upload(task), stage_name=stage_name, finished=finished)

    def upload(self, task: ConvertedTask) -> UploadedLabels:
        """Upload the label files (and an oversized label list) of ``task``; nothing is
        saved yet. Uploads go to fresh storage keys, so a failed one may simply be redone."""
        labels_map = [
            self._upload_series(task, position) for position in range(len(task.labels_map))
        ]
        labels = [_without_null_groups(label) for label in (task.labels or [])]
        labels_data: str | None = json.dumps(labels) if task.labels is not None else None
        labels_path: str | None = None
        if len(labels) > LABELS_ARRAY_LIMIT:
            labels_path = self._upload_labels_json(labels)
            labels_data = "[]"
        return UploadedLabels(
            task_id=task.task_id,
            labels_data=labels_data,
            labels_map=labels_map,
            labels_data_path=labels_path,
        )

    def commit(self, uploaded: UploadedLabels, *, stage_name: str, finished: bool) -> None:
        """The one mutation that saves (draft) or submits uploaded labels; sent once."""
        self.client.put_task_and_labels(
            self.org_id,
            self.project_id,
            stage_name=stage_name,
            task_id=uploaded.task_id,
            finished=finished,
            labels_data=uploaded.labels_data,
            labels_map=uploaded.labels_map,
            labels_data_path=uploaded.labels_data_path,
        )

    def _upload_series(self, task: ConvertedTask, position: int) -> LabelMapEntry | None:
        entry = task.labels_map[position]
        if not entry or not entry.get("labelName"):
            return None
        info = task.series_info[position] if position < len(task.series_info) else {}
        files = _label_files(entry["labelName"])
        if len(files) != 1 or info.get("binaryMask") or info.get("pngMask"):
            raise ConversionError(
                f"Task {task.task_id}, series {position}: {len(files)} label file(s) or binary "
                "masks; merge them into one label map (autolabel.imaging) before uploading"
            )
        path = files[0]
        if not path.is_file():
            raise ConversionError(
                f"Task {task.task_id}, series {position}: no label file at {path}"
            )
        relative = f"labels/{uuid.uuid4()}/{uuid.uuid4()}/0.nii.gz"
        presigned, _ = self.client.presign_uploads(
            self.org_id, self.project_id, segmentation_files=[relative]
        )
        if not presigned:
            raise GraphQLError(["presignUploadsSDK: no upload URL"], operation="presignUploadsSDK")
        self.client.upload(
            presigned[0]["presignedUrl"], path.read_bytes(), content_type="application/octet-stream"
        )
        return LabelMapEntry(labelName=presigned[0]["filePath"], seriesIndex=position)

    def _upload_labels_json(self, labels: list[dict[str, Any]]) -> str:
        relative = f"labels/{uuid.uuid4()}/{uuid.uuid4()}/data.json"
        _, presigned = self.client.presign_uploads(
            self.org_id, self.project_id, data_files=[relative]
        )
        if not presigned:
            raise GraphQLError(["presignUploadsSDK: no upload URL"], operation="presignUploadsSDK")
        body = gzip.compress(json.dumps(labels).encode("utf-8"))
        self.client.upload(
            presigned[0]["presignedUrl"],
            body,
            content_type="application/json",
            content_encoding="gzip",
        )
        return presigned[0]["filePath"]


def _label_files(name: Any) -> list[Path]:
    """The local label files a ``labelName`` names: a path, a list of paths or a folder."""
    if isinstance(name, list):
        return [Path(str(n)) for n in name]
    path = Path(str(name))
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]


def _without_null_groups(label: dict[str, Any]) -> dict[str, Any]:
    # The converter may emit ``dicom.groupids: null``; the SDK drops the key after its NIfTI
    # step (redbrick-protocol.md §4.3 step 4), so the stored labels match the SDK's.
    dicom = label.get("dicom")
    if isinstance(dicom, dict) and "groupids" in dicom and dicom["groupids"] is None:
        label = {**label, "dicom": {k: v for k, v in dicom.items() if k != "groupids"}}
    return label

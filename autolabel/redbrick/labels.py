"""Writing labels to RedBrick: the ``put_tasks`` flow of redbrick-protocol.md §4.

For each task with a ``series`` list:

1. the server converts the series format (``validateAndConvertToImportFormat``), in batches;
2. each series' label file is uploaded as it is: one ``presignUploads`` for all of the
   task's files, then a ``PUT`` each (the client never parses NIfTI; a series with several
   files or binary masks must be merged into one label map first, with
   :mod:`autolabel.imaging`);
3. more than 1000 label objects go to storage as gzip JSON (``labelsDataPath``), as the SDK does;
4. ``putManualLabelingTaskAndLabels`` saves a draft (``finished=False``) or submits.

:meth:`LabelWriter.upload` does steps 2-3 and :meth:`LabelWriter.commit` step 4, so that a
caller can re-check the task between the uploads and the one mutation that writes.
:meth:`LabelWriter.convert_and_upload` does steps 1-3 for one task with the uploads under
way while the server converts: a series' local label file is known before conversion (its
``segmentations``); after it, each position's converted ``labelName`` must name the file
sent for that position, else that position is uploaded again (an upload only fills a fresh
storage key, so one that goes unused changes nothing).

:class:`LabelWriter` raises per task; the facades turn that into the SDK's list of failed tasks.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from autolabel.errors import ConversionError, GraphQLError, PlatformError
from autolabel.redbrick.client import RedBrickClient
from autolabel.redbrick.types import LabelMapEntry, PresignedUpload

#: Above this many label objects the SDK stores them as a file instead of inline (§3.2).
LABELS_ARRAY_LIMIT = 1000
_DUMMY_ITEMS = "https://test"
_T = TypeVar("_T")


def for_conversion(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task as the converter expects it: dummy ``name``/``items``, no ``status`` (§2.11).

    ``put_tasks`` labels existing tasks, so names and items are irrelevant; the SDK replaces
    them so that validation never trips on them. A local label file given as a path object
    (``pathlib.Path``) is sent as its string, as a ``str`` would be.
    """
    out = copy.deepcopy(dict(task))
    out.pop("status", None)
    out["name"] = "test"
    series = out.get("series")
    if not isinstance(series, list):
        series = [{}] if out.get("classification") else []
    out["series"] = [
        {**s, "name": "test", "items": _DUMMY_ITEMS, **_named_files(s)} for s in series
    ]
    return out


def _named_files(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``segmentations`` with each path object as its string; {} when it holds none."""
    name = entry.get("segmentations")
    if isinstance(name, os.PathLike):
        return {"segmentations": os.fspath(name)}
    if isinstance(name, list) and any(isinstance(n, os.PathLike) for n in name):
        return {"segmentations": [os.fspath(n) if isinstance(n, os.PathLike) else n for n in name]}
    return {}


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


@dataclass(frozen=True, kw_only=True, slots=True)
class SentAhead:
    """What :meth:`LabelWriter.convert_and_upload` put in storage before the conversion
    answered: the storage key of each position's local label file, and a presigned slot
    for the labels JSON when the task looked large enough to need one."""

    files: dict[int, tuple[Path, str]] = field(default_factory=dict)
    data: PresignedUpload | None = None


class LabelWriter:
    """Converts, uploads and saves labels for tasks of one project."""

    def __init__(self, client: RedBrickClient, org_id: str, project_id: str) -> None:
        self.client = client
        self.org_id = org_id
        self.project_id = project_id

    def convert(self, tasks: Sequence[Mapping[str, Any]], storage_id: str) -> list[ConvertedTask]:
        """Convert a batch of ``series`` tasks on the server; :class:`ConversionError` if
        invalid (naming the task when the batch is one task)."""
        result = self.client.validate_and_convert([for_conversion(t) for t in tasks], storage_id)
        if not result["isValid"]:
            who = f"Task {tasks[0].get('taskId')}: " if len(tasks) == 1 else ""
            raise ConversionError(
                f"{who}RedBrick rejected the labels: {result['error'] or 'no reason given'}"
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

    def convert_and_upload(self, task: Mapping[str, Any], storage_id: str) -> UploadedLabels:
        """:meth:`convert` one task and :meth:`upload` its label files, the uploads sent
        while the server converts (see the module docstring). A conversion the server
        refuses raises its :class:`ConversionError` even when an upload failed meanwhile;
        nothing is saved on the task either way."""
        series = task.get("series")
        entries = list(series) if isinstance(series, list) else []
        ahead = {
            position: path
            for position, entry in enumerate(entries)
            if (path := _sendable_file(entry)) is not None
        }
        segments = sum(len(e.get("segmentMap") or {}) for e in entries if isinstance(e, Mapping))
        conversion = _in_background(lambda: self.convert([task], storage_id))
        try:
            sent = self._send_ahead(ahead, with_data=segments > LABELS_ARRAY_LIMIT)
        except PlatformError:
            conversion.result()  # the server's verdict on the labels comes first
            raise
        (converted,) = conversion.result()
        return self.upload(converted, sent)

    def upload(self, task: ConvertedTask, ahead: SentAhead | None = None) -> UploadedLabels:
        """Upload the label files (and an oversized label list) of ``task``; nothing is
        saved yet. A position whose converted ``labelName`` is the file ``ahead`` sent
        for it keeps that upload. Uploads go to fresh storage keys, so a failed one may
        simply be redone."""
        ahead = ahead or SentAhead()
        local = {
            position: path
            for position in range(len(task.labels_map))
            if (path := self._series_file(task, position)) is not None
        }
        # the positions whose converted file is the one sent ahead keep that upload
        keys = {p: key for p, (path, key) in ahead.files.items() if local.get(p) == path}
        todo = [p for p in local if p not in keys]
        labels = [_without_null_groups(label) for label in (task.labels or [])]
        labels_data: str | None = json.dumps(labels) if task.labels is not None else None
        oversized = len(labels) > LABELS_ARRAY_LIMIT
        slot = ahead.data if oversized else None
        segs, data = self._presign(len(todo), with_data=oversized and slot is None)
        for position, presigned in zip(todo, segs, strict=True):
            keys[position] = self._put_label_file(local[position], presigned)
        labels_path: str | None = None
        if oversized:
            labels_path = self._put_labels_json(labels, slot or data[0])
            labels_data = "[]"
        return UploadedLabels(
            task_id=task.task_id,
            labels_data=labels_data,
            labels_map=[
                LabelMapEntry(labelName=keys[p], seriesIndex=p) if p in keys else None
                for p in range(len(task.labels_map))
            ],
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

    def _send_ahead(self, files: Mapping[int, Path], *, with_data: bool) -> SentAhead:
        """Presign (one call) and PUT ``files`` (by position), and a labels JSON slot."""
        segs, data = self._presign(len(files), with_data=with_data)
        sent = {
            position: (path, self._put_label_file(path, presigned))
            for (position, path), presigned in zip(files.items(), segs, strict=True)
        }
        return SentAhead(files=sent, data=data[0] if data else None)

    def _presign(
        self, count: int, *, with_data: bool
    ) -> tuple[list[PresignedUpload], list[PresignedUpload]]:
        """One ``presignUploadsSDK`` for ``count`` label files and, ``with_data``, a labels
        JSON, under one fresh folder named as the SDK names them
        (redbrick/repo/labeling.py ``presign_labels_path``); no call for nothing."""
        if not count and not with_data:
            return [], []
        folder = f"labels/{uuid.uuid4()}/{uuid.uuid4()}"
        segs, data = self.client.presign_uploads(
            self.org_id,
            self.project_id,
            segmentation_files=[f"{folder}/{n}.nii.gz" for n in range(count)],
            data_files=[f"{folder}/data.json"] if with_data else [],
        )
        if len(segs) != count or len(data) != int(with_data):
            raise GraphQLError(["presignUploadsSDK: no upload URL"], operation="presignUploadsSDK")
        return segs, data

    def _series_file(self, task: ConvertedTask, position: int) -> Path | None:
        """The one local label file of a converted position; None when it has none.
        :class:`ConversionError` for several files, binary masks or a missing file."""
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
        if not files[0].is_file():
            raise ConversionError(
                f"Task {task.task_id}, series {position}: no label file at {files[0]}"
            )
        return files[0]

    def _put_label_file(self, path: Path, presigned: PresignedUpload) -> str:
        self.client.upload(
            presigned["presignedUrl"], path.read_bytes(), content_type="application/octet-stream"
        )
        return presigned["filePath"]

    def _put_labels_json(self, labels: list[dict[str, Any]], presigned: PresignedUpload) -> str:
        body = gzip.compress(json.dumps(labels).encode("utf-8"))
        self.client.upload(
            presigned["presignedUrl"],
            body,
            content_type="application/json",
            content_encoding="gzip",
        )
        return presigned["filePath"]


def _in_background(call: Callable[[], _T]) -> Future[_T]:
    """``call()`` in a daemon thread, its outcome in the returned future. Nothing waits
    for the thread: a caller interrupted meanwhile (Ctrl-C in the main thread, an error
    of its own) leaves at once, and the thread ends with its request (a conversion is a
    pure query: an answer nobody reads changes nothing)."""
    future: Future[_T] = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)

    threading.Thread(target=work, name="convert", daemon=True).start()
    return future


def _sendable_file(entry: Any) -> Path | None:
    """The local label file a ``series`` entry will convert to, when it is plainly one
    existing file without masks (what :meth:`LabelWriter.convert_and_upload` sends ahead)."""
    if not isinstance(entry, Mapping) or entry.get("binaryMask") or entry.get("pngMask"):
        return None
    name = entry.get("segmentations")
    if not name or not isinstance(name, str | os.PathLike | list):
        return None
    files = _label_files(name)
    return files[0] if len(files) == 1 and files[0].is_file() else None


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

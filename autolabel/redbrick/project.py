"""``get_project`` and :class:`Project`: the SDK-shaped facade plus typed pipeline methods.

SDK-shaped (a script ports by changing ``import redbrick`` to
``from autolabel import redbrick``): ``project.org_id``, ``.project_id``, ``.name``,
``.stages``, ``.taxonomy``, ``.context.key_id``, ``.labeling``, ``.review``, ``.export``.

Typed, for the pipeline: :meth:`Project.get_task`, :meth:`Project.list_assigned_tasks`,
:meth:`Project.download_items`, :meth:`Project.save_labels`, :meth:`Project.review_task`,
:meth:`Project.move_task_to_start`,
:attr:`Project.current_user_id`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from autolabel.errors import ConfigError, ConversionError, NotFoundError
from autolabel.files import safe_component
from autolabel.redbrick import altadb
from autolabel.redbrick.client import RedBrickClient
from autolabel.redbrick.endpoint import DEFAULT_URL
from autolabel.redbrick.export import Export
from autolabel.redbrick.labeling import Labeling
from autolabel.redbrick.labels import LabelWriter, UploadedLabels
from autolabel.redbrick.pages import ListingErrorHandler
from autolabel.redbrick.retry import RetryPolicy
from autolabel.redbrick.session import (
    Context,
    DownloadedSeries,
)
from autolabel.redbrick.types import (
    REDBRICK_STORAGE_ID,
    Labels,
    LabelStorage,
    Stage,
    Task,
    category_attributes,
)
from autolabel.redbrick.upload import Upload


def get_project(
    org_id: str,
    project_id: str,
    api_key: str,
    url: str = DEFAULT_URL,
    *,
    timeout: tuple[float, float] = (10.0, 60.0),
    retry: RetryPolicy | None = None,
    verify: bool | str = True,
    pool_size: int = 16,
) -> Project:
    """Open a RedBrick project, as ``redbrick.get_project(org_id, project_id, api_key, url)``.

    Makes one ``getProjectSDK`` query (stages and taxonomy included). ``url`` is the base
    URL (``http://localhost:PORT`` for the emulator). Raises
    :class:`~autolabel.errors.AuthError` for a refused or malformed key and
    :class:`~autolabel.errors.NotFoundError` for an unknown project and
    :class:`~autolabel.errors.ConfigError` for one that is archived (``status``
    ``REMOVING``), failed creation or is still being created.
    """
    client = RedBrickClient(
        api_key, url, timeout=timeout, retry=retry, verify=verify, pool_size=pool_size
    )
    try:
        return Project(client, org_id, project_id)
    except BaseException:
        client.close()
        raise


class Project:
    """One RedBrick project seen through one API key. Thread-safe."""

    def __init__(self, client: RedBrickClient, org_id: str, project_id: str) -> None:
        self.client = client
        self.org_id = org_id
        self.project_id = project_id
        raw = client.get_project(org_id, project_id)
        _check_status(project_id, raw.get("status"))
        self.raw: dict[str, Any] = raw
        self.name: str = str(raw.get("name") or "")
        self.td_type: str | None = raw.get("tdType")
        self.taxonomy: dict[str, Any] = dict(raw.get("taxonomy") or {})
        self.stages: list[Stage] = [Stage.from_wire(s) for s in raw.get("stages") or []]
        #: Several labelers per task (``consensusSettings.enabled``, redbrick/project.py).
        self.consensus: bool = bool((raw.get("consensusSettings") or {}).get("enabled"))
        self.context = Context(client)
        self.labeling = Labeling(self)
        self.review = Labeling(self, review=True)
        self.export = Export(self)
        self.upload = Upload(self)
        self._storage: LabelStorage | None = None

    def __repr__(self) -> str:
        return (
            f"Project(org_id={self.org_id!r}, project_id={self.project_id!r}, name={self.name!r})"
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def output_stage_name(self) -> str:
        """The Ground Truth stage's name in the workflow (``Output`` by default)."""
        for stage in self.stages:
            if stage.brick_name == "labelset-output":
                return stage.stage_name
        return "Output"

    def sampled_review_after(self, stage_name: str) -> tuple[str, float] | None:
        """The review stage a submit from ``stage_name`` enters, with its ``reviewPercent``,
        when that stage reviews only a share (below 1) of its tasks; else None.

        Such a stage lets the rest of the submitted tasks go straight on (to Ground Truth
        when it is the last review): redbrick/stage/review.py, ``review_percentage``.
        """
        stages = {s.stage_name: s for s in self.stages}
        here = stages.get(stage_name)
        target = here.routing.get("nextStageName") if here else None
        for _ in range(len(stages) + 1):
            stage = stages.get(str(target)) if target else None
            if stage is None:
                return None
            if stage.brick_name == "feedback":
                target = stage.routing.get("feedbackStageName")
                continue
            share = stage.config.get("reviewPercent") if stage.is_review else None
            if share is None or float(share) >= 1:
                return None
            return stage.stage_name, float(share)
        return None

    @property
    def current_user_id(self) -> str:
        """The API key's user id (``API:<uuid>``): the assignee of the key's tasks."""
        return self.context.key_id

    def label_storage(self) -> LabelStorage:
        """The project's label storage (``getLabelStorage``), fetched once."""
        if self._storage is None:
            self._storage = self.client.label_storage(self.org_id, self.project_id)
        return self._storage

    # -- reading -------------------------------------------------------------------------

    def get_task(self, task_id: str, *, presigned_items: bool = True) -> Task:
        """The task with its series, items and latest labels; :class:`NotFoundError` if none.
        ``presigned_items=False``: without the items' URLs (a re-read of its state)."""
        kind = {"consensus": self.consensus, "presigned_items": presigned_items}
        return Task.from_wire(self.client.get_task(self.org_id, self.project_id, task_id, **kind))

    def list_assigned_tasks(
        self,
        stage_name: str,
        *,
        user_id: str | None = None,
        page_size: int = 50,
        on_error: ListingErrorHandler | None = None,
    ) -> Iterator[Task]:
        """Tasks queued in ``stage_name`` and assigned to ``user_id`` (default: this key).

        Listing carries no items or labels (``Task.items_loaded`` is False): call
        :meth:`get_task` (or :meth:`download_items`, which does) before using them. A field
        error in the listing goes to ``on_error`` and the listing goes on (see
        :meth:`RedBrickClient.list_tasks`).
        """
        assignee = user_id or self.current_user_id
        for raw in self.client.list_tasks(
            self.org_id,
            self.project_id,
            stage_name=stage_name,
            filters={"userId": assignee},
            page_size=page_size,
            on_error=on_error,
        ):
            yield Task.from_wire(raw)

    def find_tasks(self, name: str, *, exact: bool = True) -> list[Task]:
        """Tasks named ``name`` (``exact``) or whose name starts with it, in any stage."""
        search = '"' + name.strip('"') + '"' if exact else name
        return [
            Task.from_wire(raw)
            for raw in self.client.list_tasks(
                self.org_id, self.project_id, task_search=search, filters={}
            )
        ]

    def download_items(
        self, task: Task, folder: str | Path, *, workers: int = 4, presign: bool = False
    ) -> list[DownloadedSeries]:
        """Download the task's images into ``folder`` and return the files per series.

        The result has one entry per series in the task's order, each with its files in the
        series' item order, under ``folder/<index>-<series name>/``, and the SHA-256 digest
        of each file (hashed as it streamed in). The URLs a fresh read came with are used
        (:meth:`Task.item_urls`), else items are presigned once per call; each file is
        streamed to a temporary name and renamed when complete, with retries. A task from
        a listing is re-read first to get its items. ``presign=True`` presigns even then,
        as the SDK's export does (redbrick/export/public.py: ``presign_items`` after reading
        the task), for a facade that must send the SDK's requests.
        """
        if not task.items_loaded:
            task = self.get_task(task.task_id)
        if not task.items:
            return [DownloadedSeries(index=s.index, name=s.name, paths=()) for s in task.series]
        urls = (None if presign else task.item_urls()) or self.client.presign_items(
            self.org_id, task.storage_id or REDBRICK_STORAGE_ID, task.items
        )
        by_item = dict(zip(task.items, urls, strict=True))
        missing = [item for item, url in by_item.items() if not url]
        if missing:
            raise NotFoundError(
                f"Task {task.task_id}: RedBrick could not presign {len(missing)} item(s), e.g. {missing[0]}",
                operation="presignItemsSDK",
            )
        root = Path(folder)
        jobs: list[tuple[str, Path]] = []
        result = []
        for series in task.series:
            directory = (
                root / f"{series.index}-{safe_component(series.name or '', fallback='series')}"
            )
            alta = [str(by_item[item]) for item in series.items if altadb.is_altadb(by_item[item])]
            if alta:  # a Datasets project: one manifest per series (redbrick/export/public.py)
                instances = [
                    i
                    for n, url in enumerate(alta)
                    for i in altadb.download_series(
                        self.client.transport, url, directory / f"altadb-{n}"
                    )
                ]
                result.append(
                    DownloadedSeries(
                        index=series.index, name=series.name, paths=(), instances=tuple(instances)
                    )
                )
                continue
            paths = tuple(
                directory / f"{n:05d}-{_basename(item)}" for n, item in enumerate(series.items)
            )
            jobs += [
                (str(by_item[item]), path) for item, path in zip(series.items, paths, strict=True)
            ]
            result.append(DownloadedSeries(index=series.index, name=series.name, paths=paths))
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="download") as pool:
            digests = dict(
                zip(
                    (path for _, path in jobs),
                    pool.map(lambda job: self.client.download_sha256(*job), jobs),
                    strict=True,
                )
            )
        return [
            dataclasses.replace(series, digests=tuple(digests[p] for p in series.paths))
            if series.paths
            else series
            for series in result
        ]

    def download_labels(self, task: Task, folder: str | Path) -> dict[int, Path]:
        """Download the task's stored label files; ``{series index: local .nii.gz path}``."""
        labels = task.labels
        if labels is None or not labels.files:
            return {}
        # Stored entries name their series by imageIndex (see types.series_of_label_files).
        entries = sorted(labels.files.items())
        urls = self.client.presign_items(
            self.org_id, labels.storage_id or REDBRICK_STORAGE_ID, [name for _, name in entries]
        )
        out: dict[int, Path] = {}
        for (index, name), url in zip(entries, urls, strict=True):
            if not url:
                raise NotFoundError(f"Task {task.task_id}: label file {name} cannot be presigned")
            out[index] = self.client.download(url, Path(folder) / f"{index}.nii.gz")
        return out

    def stored_labels(self, task: Task, labels: Labels | None = None) -> list[dict[str, Any]]:
        """The task's latest label objects: ``labelsData``, or, when ``labelsDataPath`` is
        set (large label sets), that stored JSON file, downloaded and read,
        as redbrick/export/public.py ``download_labels`` does. [] when the task has none.
        ``labels`` picks other labels of the task than its latest (a consensus sub-task's).
        Raises :class:`~autolabel.errors.NotFoundError` when the file cannot be presigned
        and :class:`~autolabel.errors.ConversionError` when it is not a JSON list."""
        labels = task.labels if labels is None else labels
        if labels is None:
            return []
        if not labels.labels_data_path:
            return list(labels.labels)
        path = labels.labels_data_path
        (url,) = self.client.presign_items(
            self.org_id, labels.storage_id or REDBRICK_STORAGE_ID, [path]
        )
        if not url:
            raise NotFoundError(f"Task {task.task_id}: labels file {path} cannot be presigned")
        with tempfile.TemporaryDirectory(prefix="labels-") as scratch:
            local = self.client.download(url, Path(scratch) / "labels.json")
            try:
                decoded = json.loads(local.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConversionError(
                    f"Task {task.task_id}: labels file {path} is not JSON: {exc}"
                ) from exc
        if not isinstance(decoded, list):
            raise ConversionError(f"Task {task.task_id}: labels file {path} is not a JSON list")
        return decoded

    # -- writing (one task; errors raise) ------------------------------------------------

    def save_labels(
        self,
        task_id: str,
        stage_name: str,
        series: Sequence[Mapping[str, Any]],
        *,
        finalize: bool = False,
        provenance: Mapping[str, str] | None = None,
    ) -> None:
        """Save labels for one task as a draft (default) or submit them (``finalize=True``).

        ``series`` is in the task's series order: ``[{"segmentations": <local NIfTI>,
        "segmentMap": {"1": "Liver", ...}}, ...]`` (one label file per series).
        ``provenance`` (e.g. ``{"Model": "abdomen-seg 3.1"}``) is written as label
        attributes, but only for names the taxonomy defines as attributes of the labelled
        object types: RedBrick stores labels, not free metadata, on this call.

        Raises :class:`~autolabel.errors.TaskStateError` when the task is not queued in
        ``stage_name`` for this key, :class:`~autolabel.errors.ConversionError` when RedBrick
        rejects the series, other :class:`~autolabel.errors.PlatformError` on failure. The
        mutation is sent once: after a ``TransportError`` re-read the task before retrying.
        """
        uploaded = self.upload_labels(task_id, series, provenance=provenance)
        self.commit_labels(uploaded, stage_name, finalize=finalize)

    def upload_labels(
        self,
        task_id: str,
        series: Sequence[Mapping[str, Any]],
        *,
        provenance: Mapping[str, str] | None = None,
    ) -> UploadedLabels:
        """The first half of :meth:`save_labels`: convert ``series`` on the server while its
        label files upload (:meth:`LabelWriter.convert_and_upload`). Nothing is saved on
        the task; uploads are safe to redo."""
        task = {"taskId": task_id, "series": self.with_provenance(series, provenance or {})}
        writer = LabelWriter(self.client, self.org_id, self.project_id)
        return writer.convert_and_upload(task, REDBRICK_STORAGE_ID)

    def commit_labels(
        self, uploaded: UploadedLabels, stage_name: str, *, finalize: bool = False
    ) -> None:
        """The second half of :meth:`save_labels`: the one mutation that saves (draft) or
        submits ``uploaded``. Sent once; after a ``TransportError`` it is in doubt."""
        writer = LabelWriter(self.client, self.org_id, self.project_id)
        writer.commit(uploaded, stage_name=stage_name, finished=finalize)

    def with_provenance(
        self, series: Sequence[Mapping[str, Any]], provenance: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """``series`` with ``provenance`` added to each segment's ``attributes``, where allowed.

        A name is added to a segment only if the taxonomy object type of that segment has an
        attribute of that name (else the server may reject the labels).
        """
        out = copy.deepcopy([dict(s) for s in series])
        if not provenance:
            return out
        allowed = category_attributes(self.taxonomy)
        for entry in out:
            segment_map = entry.get("segmentMap") or {}
            for key, value in list(segment_map.items()):
                spec = value if isinstance(value, dict) else {"category": value}
                names = allowed.get(str(spec.get("category")), {})
                extra = {k: v for k, v in provenance.items() if k in names}
                if extra:
                    segment_map[key] = {
                        **spec,
                        "attributes": {**(spec.get("attributes") or {}), **extra},
                    }
        return out

    def review_task(
        self,
        task_id: str,
        stage_name: str,
        *,
        accept: bool,
        comment: str | None = None,
        corrected_series: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Accept or reject a task in a Review stage; with ``corrected_series``, accept with
        correction (the new labels replace the old ones). Raises like :meth:`save_labels`.
        """
        if corrected_series is not None and accept:
            self.save_labels(task_id, stage_name, corrected_series, finalize=True)
            return
        if corrected_series is not None:
            raise ConversionError("A rejected task cannot carry corrected labels")
        self.client.put_review_task(
            self.org_id,
            self.project_id,
            stage_name=stage_name,
            task_id=task_id,
            accept=accept,
            comment=comment,
        )

    def move_task_to_start(self, task_id: str) -> None:
        """Send a Ground Truth task back to the first Label stage."""
        self.client.move_task_to_start(self.org_id, self.project_id, task_id)


#: What an unusable project ``status`` means (redbrick/project.py refuses the same ones).
_UNUSABLE = {
    "REMOVING": "has been archived; restore it in RedBrick or use another --project",
    "CREATION_FAILURE": "failed to be created; create it again in RedBrick",
    "CREATING": "is still being created; try again in a minute",
}


def _check_status(project_id: str, status: object) -> None:
    """Refuse a project that is archived, failed creation or is still being created."""
    if status is None or status == "CREATION_SUCCESS":
        return
    why = _UNUSABLE.get(str(status), f"has status {status}, which autolabel cannot work on")
    raise ConfigError(f"Project {project_id} {why}")


def _basename(item: str) -> str:
    path = urllib.parse.urlsplit(item).path if "://" in item else item
    return safe_component(path.rstrip("/").rsplit("/", 1)[-1])

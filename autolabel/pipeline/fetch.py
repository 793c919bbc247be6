"""Fetch: choose the tasks of a run and bring each one's series to local volumes.

Task selection follows RedBrick's rule that only tasks queued in a stage and assigned to the
API key can be written there: :func:`select_tasks` lists them (or checks the ones asked for
by id or name) lazily, so a project of any size streams through the run.

:func:`fetch_task` re-reads one task (items and latest labels), refuses tasks a person has
labelled, downloads its series into a folder of the work directory, decodes each into a
:class:`~autolabel.records.Volume` and removes the downloaded files again.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel import imaging
from autolabel.errors import ImageError, NotFoundError, TaskSkipped
from autolabel.records import Volume
from autolabel.redbrick import Project, Task
from autolabel.redbrick.pages import ListingErrorHandler
from autolabel.redbrick.session import DownloadedSeries
from autolabel.redbrick.types import Labels, category_attributes, is_uuid

#: Told about a task a run leaves out: ``(task_id, task_name, reason)``.
SkipHandler = Callable[[str, str, str], None]
#: The label attribute a run's provenance goes in (where the taxonomy defines it).
PROVENANCE_ATTRIBUTE = "Model"


def provenance(name: str, version: str) -> dict[str, str]:
    """The provenance a model's labels carry: ``{"Model": "<name> <version>"}``."""
    return {PROVENANCE_ATTRIBUTE: f"{name} {version}"}


def has_no_labels(labels: Labels | None) -> bool:
    """True when ``labels`` hold nothing: no objects, no label file, no labels file (what a
    draft saved with an empty ``series`` leaves, e.g. the revert of ``autolabel undo``)."""
    if labels is None:
        return True
    files = any(entry and entry.get("labelName") for entry in labels.labels_map)
    return not labels.labels and not files and not labels.labels_data_path and not labels.files


@dataclass(frozen=True)
class LabelsMarker:
    """Who wrote a task's latest labels and when, as seen at fetch time."""

    created_by: str | None
    created_at: str | None

    @classmethod
    def of(cls, task: Task, user_id: str | None = None) -> LabelsMarker:
        """The marker of ``task``'s latest labels (both None when it has none); of a
        consensus task, the marker of ``user_id``'s own sub-task (:meth:`Task.labels_of`)."""
        labels = task.labels_of(user_id) if user_id is not None else task.labels
        if labels is None:
            return cls(None, None)
        return cls(labels.created_by, labels.created_at)


@dataclass(frozen=True)
class Stamp:
    """How a run's own writes look on RedBrick: labels saved by ``user_id`` (the API key)
    whose label objects carry ``attributes`` (the model's provenance, ``{"Model": "<name>
    <version>"}``, as far as the taxonomy lets it land; empty when it cannot).

    RedBrick is the one truth shared by runs in other work folders or on other machines:
    a task whose latest labels bear the stamp was written by a run of this model.
    """

    user_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def on(self, task: Task) -> bool:
        """Whether ``task``'s latest labels bear this stamp. Where no attribute can tell
        runs apart (none lands in this taxonomy, or the labels are stored as a file), any
        labels of the key count: autolabel then never writes the task a second time.
        Labels that hold nothing (:func:`has_no_labels`: an undone draft) bear no stamp."""
        labels = task.labels_of(self.user_id)  # a consensus task: the key's own sub-task
        if labels is None or labels.created_by != self.user_id or has_no_labels(labels):
            return False
        if not self.attributes or not labels.labels:
            return True
        return any(_carries(label, self.attributes) for label in labels.labels)

    def describe(self) -> str:
        """The stamp for a message: ``ct-threshold 1.0`` or ``this API key``."""
        return ", ".join(self.attributes.values()) or "this API key"


def _carries(label: Mapping[str, object], attributes: Mapping[str, str]) -> bool:
    found = label.get("attributes")
    if not isinstance(found, list):
        return False
    values = {a.get("name"): a.get("value") for a in found if isinstance(a, dict)}
    return all(values.get(name) == value for name, value in attributes.items())


def stampable(project: Project, labels: Sequence[dict[str, Any]]) -> bool:
    """Whether some label object is of a category whose taxonomy object defines the
    provenance attribute: a run's write of it carries the stamp (``Project.with_provenance``),
    so labels without any stamp there were saved by something else."""
    attributes = category_attributes(project.taxonomy)
    return any(
        PROVENANCE_ATTRIBUTE in attributes.get(str(label.get("category")), {}) for label in labels
    )


def model_stamps(labels: Sequence[dict[str, Any]]) -> set[str]:
    """The provenance values (``Model`` attributes) on the label objects."""
    found: set[str] = set()
    for label in labels:
        for attribute in label.get("attributes") or []:
            if isinstance(attribute, dict) and attribute.get("name") == PROVENANCE_ATTRIBUTE:
                found.add(str(attribute.get("value")))
    return found


def done_elsewhere_reason(task: Task, stamp: Stamp) -> str:
    """Why a task that bears ``stamp`` at fetch time is skipped."""
    at = LabelsMarker.of(task, stamp.user_id).created_at
    return (
        f"already pre-labelled by {stamp.describe()}: this API key saved its labels at {at} "
        "(another autolabel run, in another work folder or on another machine); "
        "--force redoes it"
    )


@dataclass(frozen=True)
class FetchedSeries:
    """One series of a task, decoded."""

    index: int
    name: str
    volume: Volume


@dataclass(frozen=True)
class FetchedTask:
    """A task with its series decoded, the checksum of its input files and its labels marker."""

    task: Task
    series: tuple[FetchedSeries, ...]
    input_checksum: str
    marker: LabelsMarker
    seconds: float = 0.0

    def report(self) -> FetchReport:
        """What the run records of this fetch (no image data: it crosses to the Ray driver)."""
        return FetchReport(
            self.task, self.input_checksum, len(self.series), self.marker, self.seconds
        )


@dataclass(frozen=True)
class FetchReport:
    """A fetch as the run records it: the task as re-read, the checksum of its input files,
    how many series it has, its labels marker and the seconds the fetch took."""

    task: Task
    input_checksum: str
    series: int
    marker: LabelsMarker
    seconds: float


def select_tasks(
    project: Project,
    stage_name: str,
    *,
    task_ids: Sequence[str] = (),
    name: str | None = None,
    on_skip: SkipHandler | None = None,
    on_listing_error: ListingErrorHandler | None = None,
) -> Iterator[Task]:
    """The tasks a run works on, lazily.

    By default: every task queued in ``stage_name`` and assigned to the key. With
    ``task_ids`` or ``name`` (prefix search, or exact in double quotes): those tasks, and
    ``on_skip(task_id, name, reason)`` is told about each that is not queued in the stage for
    the key or does not exist. A field error in the listing goes to ``on_listing_error``
    and the listing goes on (an entry that survived is still yielded: its full re-read
    decides). The run decides how many it takes.
    """
    user = project.current_user_id

    def wanted(task: Task) -> bool:
        problem = writable_problem(task, stage_name, user)
        if problem is not None:
            if on_skip is not None:
                on_skip(task.task_id, task.name, problem)
            return False
        return True

    if task_ids:
        candidates: Iterator[Task] = _tasks_by_id(project, task_ids, on_skip)
    elif name:
        exact = name.startswith('"') and name.endswith('"') and len(name) > 1
        candidates = iter(project.find_tasks(name.strip('"'), exact=exact))
    else:
        candidates = project.list_assigned_tasks(stage_name, on_error=on_listing_error)
    for task in candidates:
        if (task_ids or name) and not wanted(task):
            continue
        yield task


def _tasks_by_id(
    project: Project,
    task_ids: Sequence[str],
    on_skip: SkipHandler | None,
) -> Iterator[Task]:
    for task_id in dict.fromkeys(task_ids):
        if not is_uuid(task_id):
            if on_skip is not None:
                on_skip(task_id, "", "not a task id: RedBrick task ids are UUIDs")
            continue
        try:
            yield project.get_task(task_id)
        except NotFoundError:
            if on_skip is not None:
                on_skip(task_id, "", "no such task in this project")


def writable_problem(task: Task, stage_name: str, user_id: str) -> str | None:
    """Why ``task`` cannot be written in ``stage_name`` by ``user_id``, or None if it can."""
    if task.stage_name != stage_name:
        return (
            f"task is not queued in {stage_name} (it is in stage "
            f"{task.stage_name or 'unknown'!r}); only tasks queued in the run's stage can be "
            "written"
        )
    if task.is_consensus:
        part = task.part_of(user_id)
        if part is None:
            who = ", ".join(p.email or p.user_id or "?" for p in task.sub_tasks)
            return (
                f"consensus task labelled by {who}, not by this API key; add the key as one "
                "of its labelers (project.labeling.assign_tasks) to pre-label it"
            )
        if part.state == "COMPLETED":
            return "this API key already submitted its own sub-task of this consensus task"
        return None
    if task.assignee != user_id:
        who = task.assignee_email or task.assignee or "nobody"
        return (
            f"task is assigned to {who}, not to this API key; assign it to the key "
            "(project.labeling.assign_tasks) to pre-label it"
        )
    return None


def human_labels_problem(
    task: Task, user_id: str, read_stored: Callable[[Task, Labels], list[Any]] | None = None
) -> str | None:
    """A reason to leave ``task`` alone if a person (not this key) wrote its labels.

    Labels count when ``labelsData`` holds objects, a label file is stored, or the
    ``labelsDataPath`` file (where RedBrick keeps large label sets, ``labelsData`` then
    being empty) holds objects: ``read_stored`` (``Project.stored_labels``) reads it; without
    it such a task counts as labelled. In a consensus task only the key's own sub-task
    counts: the other labelers' labels live in their own sub-tasks and are not replaced.
    """
    labels = task.labels_of(user_id)
    if labels is None or labels.created_by in (None, user_id):
        return None
    if not labels.labels and not labels.labels_map:
        if not labels.labels_data_path:
            return None
        if read_stored is not None and not read_stored(task, labels):
            return None
    return (
        f"task already has labels saved by {labels.created_by} at {labels.created_at}; "
        "autolabel never overwrites a person's work"
    )


def _as_files(series: DownloadedSeries) -> DownloadedSeries:
    """A Datasets (AltaDB) series written as DICOM files next to its parts; others as is."""
    if not series.instances:
        return series
    folder = series.instances[0].frames[0].parent.parent
    paths = tuple(
        imaging.from_altadb_instance(
            i.header, i.transfer_syntax, [f.read_bytes() for f in i.frames],
            folder / f"{n:05d}.dcm",
        )
        for n, i in enumerate(series.instances)
    )  # fmt: skip
    return dataclasses.replace(series, paths=paths, instances=())


def load_task_series(
    project: Project, task: Task, folder: Path, *, limits: imaging.ImageLimits | None = None
) -> tuple[tuple[FetchedSeries, ...], str]:
    """Download and decode every series of ``task`` (read with items); return them and the
    checksum of the input files. ``folder`` is removed afterwards, whatever happens.
    Raises :class:`~autolabel.errors.ImageError` naming the task and series (a series over
    ``limits`` is refused before it is decoded).
    """
    try:
        downloaded = [_as_files(series) for series in project.download_items(task, folder)]
        files = [path for series in downloaded for path in series.paths]
        if not files:
            raise ImageError(f"task {task.task_id} ({task.name}): it has no image items")
        hashed = all(len(s.digests) == len(s.paths) for s in downloaded)
        checksum = (
            imaging.checksum_digests([d for s in downloaded for d in s.digests])
            if hashed  # hashed as they streamed in: the files are read once, to decode
            else imaging.checksum_files(files)
        )
        decoded = []
        for series in downloaded:
            label = series.name or f"series {series.index}"
            source = f"task {task.task_id} ({task.name}), {label}"
            if not series.paths:
                raise ImageError(f"{source}: the series has no items")
            volume = imaging.load_volume(list(series.paths), source=source, limits=limits)
            decoded.append(FetchedSeries(series.index, series.name or "", volume))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return tuple(decoded), checksum


def fetch_task(
    project: Project,
    task: Task,
    stage_name: str,
    folder: Path,
    *,
    limits: imaging.ImageLimits | None = None,
    done: Stamp | None = None,
) -> FetchedTask:
    """Re-read ``task``, check it may be written, download and decode each of its series.

    Raises :class:`TaskSkipped` when the task is no longer queued in ``stage_name`` for the
    key, a person has labelled it, or (with ``done``) its latest labels bear that stamp --
    another run of the model did it --, :class:`~autolabel.errors.ImageError` when a series
    cannot be decoded (naming the task and series) and
    :class:`~autolabel.errors.PlatformError` when RedBrick fails. ``folder`` is created for
    the download and removed afterwards, whatever happens.
    """
    fresh = project.get_task(task.task_id)
    user = project.current_user_id
    problem = writable_problem(fresh, stage_name, user) or human_labels_problem(
        fresh, user, project.stored_labels
    )
    if problem is not None:
        raise TaskSkipped(problem)
    if done is not None and done.on(fresh):
        raise TaskSkipped(done_elsewhere_reason(fresh, done))
    series, checksum = load_task_series(project, fresh, folder, limits=limits)
    return FetchedTask(fresh, series, checksum, LabelsMarker.of(fresh, user))

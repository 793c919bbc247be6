"""What is done to one task, with no ledger and no scheduling: :class:`TaskSteps` fetches
(re-read, guard, download, decode), predicts, converts (label files, payload, preview) and
writes (guarded, exactly once). The local run and the Ray actors both call it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from autolabel import convert
from autolabel.errors import AuthError, ConfigError, ConversionError, PlatformError
from autolabel.files import atomic_file, task_folder
from autolabel.imaging import ImageLimits
from autolabel.inference.confidence import SeriesConfidence
from autolabel.inference.guard import guard_model
from autolabel.inference.spec import ModelSpec, SegmentationModel, label_counts
from autolabel.pipeline.fetch import FetchedSeries, FetchedTask, Stamp, fetch_task, provenance
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.routing import (
    check_categories,
    dropped_categories,
    task_confidence,
    with_confidence_attribute,
)
from autolabel.pipeline.submit import default_settle_window, is_transient, write_task
from autolabel.pipeline.summary import model_key
from autolabel.records import Volume
from autolabel.redbrick import Project, Task

if TYPE_CHECKING:
    from autolabel.pipeline.flow import WriteClaim
    from autolabel.pipeline.previews import PreviewWorker


@dataclass(frozen=True)
class Prediction:
    """The model's label map of each series of a task, the seconds inference took, the
    model's device events meanwhile (out of memory: smaller batch, CPU; for the ledger)
    and the confidence of each series' labels (``None`` entries: the model gives none)."""

    label_maps: list[npt.NDArray[np.integer]]
    seconds: float
    device_events: list[dict[str, Any]] = field(default_factory=list)
    confidence: list[SeriesConfidence | None] = field(default_factory=list)


@dataclass(frozen=True)
class Converted:
    """A task's conversion: the ``series`` entries to write (empty: nothing to write), its
    local results (label files, previews, payload), the predicted millilitres per taxonomy
    category and the seconds it took. ``confidence`` is the confidence of each predicted
    category (:func:`autolabel.pipeline.routing.task_confidence`; None: the model gives no
    probabilities), ``dropped`` the categories left out by ``drop_below``. Plain and
    picklable (it crosses to the Ray driver)."""

    entries: list[dict[str, Any]]
    files: dict[str, str]
    volumes_ml: dict[str, float]
    seconds: float
    confidence: dict[str, dict[str, Any]] | None = None
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    """A write that went through: its seconds, and what went wrong after it (the task
    priority could not be set), else ``""``."""

    seconds: float
    note: str = ""


def segment_map_for(
    spec: ModelSpec,
    taxonomy: Mapping[str, Any],
    mapping: Mapping[str | int, convert.Target] | None = None,
    *,
    allow_unmapped: bool = False,
) -> convert.SegmentMap:
    """Model label → taxonomy category: the card's default mapping with ``mapping`` on top.

    Raises :class:`~autolabel.errors.ConversionError` when a model class has no category
    (unless ``allow_unmapped``).
    """
    merged: dict[str | int, convert.Target] = {
        spec.labels[i]: spec.category_of(i) for i in spec.labels
    }
    merged.update(mapping or {})
    return convert.build_segment_map(
        dict(spec.labels), taxonomy, merged, allow_unmapped=allow_unmapped
    )


class TaskSteps:
    """The work done on one task, with no ledger and no scheduling.

    The local run (:func:`run`) and the Ray actors of :mod:`autolabel.pipeline.ray` call the same
    steps, so a task is fetched, predicted, converted and written the same way on both:

    * :meth:`fetch` -- re-read, guard, download and decode (retrying transient failures);
    * :meth:`predict` -- one label map per series (:class:`Prediction`);
    * :meth:`convert` -- label files, previews and the ``series`` payload in the task's
      own folder ``options.results_dir/<task id>/`` (:func:`autolabel.files.task_folder`:
      never the name, so tasks whose names collide keep apart) (:class:`Converted`); with
      :attr:`previews` set, the previews are rendered there, off the write's path;
    * :meth:`write` -- the guarded, exactly-once write of
      :func:`autolabel.pipeline.submit.write_task`, under a committed
      :class:`~autolabel.pipeline.flow.WriteClaim`.

    Each step times itself. Errors are raised as they come
    (:class:`~autolabel.errors.TaskSkipped` for a task that must be left alone); the
    caller's :class:`~autolabel.pipeline.flow.TaskFlow` records them.
    """

    def __init__(self, project: Project, model: SegmentationModel, options: RunOptions) -> None:
        self.project = project
        # A model's exit, interrupt or endless loop is its task's failure, never the run's.
        self.model = guard_model(model, options.model_timeout_s)
        self.options = options
        self.limits = ImageLimits(options.max_voxels, options.max_image_bytes)
        self.key = model_key(model)
        self.segment_map = segment_map_for(
            model.spec, project.taxonomy, options.mapping, allow_unmapped=options.allow_unmapped
        )
        self._check_routing(options)
        self.provenance = provenance(self.key.name, self.key.version)
        self.stamp = Stamp(project.current_user_id, self._landing(self.provenance))
        self.settle_window_s = (
            options.settle_window_s
            if options.settle_window_s is not None
            else default_settle_window(project)
        )
        #: Where previews are rendered (the local run's worker); None: in :meth:`convert`.
        self.previews: PreviewWorker | None = None

    def _check_routing(self, options: RunOptions) -> None:
        """Refuse confidence routing with a model that gives no confidence, and thresholds
        for categories this run does not write (a configuration error, before any task)."""
        wanted = [
            flag
            for flag, on in (
                ("--finalize-above", options.finalize_above is not None),
                ("--drop-below", options.drop_below is not None),
                ("--prioritize", options.prioritize),
            )
            if on
        ]
        if wanted and not getattr(self.model, "gives_confidence", False):
            raise ConfigError(
                f"{', '.join(wanted)} route by confidence, but model {self.key.name!r} gives no "
                "probabilities (no confidence); use a model that does (phantom-unet, nnU-Net, "
                "TorchScript cards, plug-ins with predict_probabilities or confidence)"
            )
        names = [c.name for c in self.segment_map.categories.values()]
        check_categories(options.finalize_above, names, "--finalize-above")
        check_categories(options.drop_below, names, "--drop-below")

    def _landing(self, provenance: Mapping[str, str]) -> dict[str, str]:
        """The provenance attributes that land on this run's labels (those the taxonomy
        defines for the categories written), by the rule of ``Project.with_provenance``."""
        probe = {str(v): c.name for v, c in self.segment_map.categories.items()}
        (entry,) = self.project.with_provenance([{"segmentMap": probe}], provenance)
        landed: dict[str, str] = {}
        for spec in entry["segmentMap"].values():
            if isinstance(spec, dict):
                landed.update(spec.get("attributes") or {})
        return landed

    def fetch(self, task: Task, folder: Path) -> FetchedTask:
        """Re-read, check and decode ``task`` (downloading into ``folder``, removed after).

        A draft run without ``force`` also skips a task whose labels bear the run's stamp
        (:class:`~autolabel.pipeline.fetch.Stamp`): another run of this model, in another work folder
        or on another machine, did it.
        """
        options = self.options
        done = self.stamp if options.mode == "draft" and not options.force else None
        began = time.perf_counter()
        fetched = _with_retries(
            lambda: fetch_task(
                self.project, task, options.stage, folder, limits=self.limits, done=done
            )
        )
        return dataclasses.replace(fetched, seconds=time.perf_counter() - began)

    def predict(self, fetched: FetchedTask) -> Prediction:
        """The model's label map of each series of ``fetched``."""
        began = time.perf_counter()
        before: list[Any] = getattr(self.model, "events", [])
        seen = len(before)
        results = [self.model.predict_with_confidence(series.volume) for series in fetched.series]
        after: list[Any] = getattr(self.model, "events", [])
        new = after[seen:] if after is before else after  # a reloaded model: all its events
        events = [_plain(e) for e in new]
        return Prediction(
            [labels for labels, _ in results],
            time.perf_counter() - began,
            events,
            [confidence for _, confidence in results],
        )

    def convert(
        self,
        fetched: FetchedTask,
        label_maps: Sequence[npt.NDArray[np.integer]],
        confidence: Sequence[SeriesConfidence | None] = (),
    ) -> Converted:
        """Write the task's label files, previews and payload; return the ``series`` entries.

        ``confidence`` (one per series, from :meth:`predict`) gives the task's confidence
        per category: categories below ``drop_below`` are left out, each segment gets its
        category's confidence as the taxonomy's ``Confidence`` attribute where it has one,
        and ``series.json`` records it (``null``: no probabilities).

        The entries are one per series, in the task's series order (a series with
        nothing to write gets an entry without ``segmentations``, see
        :func:`autolabel.convert.positional`); no entries means nothing is left to write
        (every series empty under the ``skip`` policy). A local file that cannot be written
        raises
        :class:`~autolabel.errors.ConversionError` naming the task and the folder.
        """
        began = time.perf_counter()
        files: dict[str, str] = {}
        volumes: dict[str, float] = {}
        category_of = {
            label_id: self.segment_map.categories[value].name
            for label_id, value in self.segment_map.values.items()
            if value
        }
        scores = task_confidence(list(confidence), category_of) if confidence else None
        dropped = dropped_categories(scores, self.options.drop_below)
        try:
            entries = self._convert(fetched, label_maps, files, volumes, scores, dropped)
        except OSError as exc:
            task = fetched.task
            raise ConversionError(
                f"task {task.task_id} ({task.name[:80]}): cannot write its results under "
                f"{self.options.results_dir}: {exc.strerror or exc}. Check that folder "
                "(free space, permissions) or choose another with --out."
            ) from exc
        seconds = time.perf_counter() - began
        return Converted(entries, files, volumes, seconds, scores, dropped)

    def _convert(
        self,
        fetched: FetchedTask,
        label_maps: Sequence[npt.NDArray[np.integer]],
        files: dict[str, str],
        volumes: dict[str, float],
        confidence: dict[str, dict[str, Any]] | None,
        dropped: Sequence[str],
    ) -> list[dict[str, Any]]:
        options = self.options
        task = fetched.task
        folder = task_folder(options.results_dir, task.task_id)
        folder.mkdir(parents=True, exist_ok=True)
        segment_map = self.segment_map
        if dropped:  # the unsure categories' voxels become background
            values = {
                i: 0 if v and segment_map.categories[v].name in dropped else v
                for i, v in segment_map.values.items()
            }
            segment_map = dataclasses.replace(segment_map, values=values)
        found: list[convert.SeriesEntry | None] = []
        names: list[str] = []
        for series, label_map in zip(fetched.series, label_maps, strict=True):
            path = folder / f"series-{series.index}-labels.nii.gz"
            name = series.name or f"{task.name or task.task_id}-{series.index}"
            counts = _counts(label_map, segment_map)  # once: entry and volumes
            entry = convert.to_series(
                label_map,
                series.volume,
                segment_map,
                name=name,
                path=path,
                empty=options.empty,
                instances=options.instances,
                min_component_voxels=options.min_component_voxels,
                counts=counts,
            )
            found.append(entry)
            names.append(name)
            if entry is None:
                continue
            files[f"labels-{series.index}"] = str(path)
            volumes_ml = _volumes_ml(counts, label_map, series.volume, segment_map)
            for category, ml in volumes_ml.items():
                volumes[category] = volumes.get(category, 0.0) + ml
            if options.previews:
                preview = folder / f"series-{series.index}-preview.png"
                self._preview(preview, series, label_map, task)
                files[f"preview-{series.index}"] = str(preview)
        # One entry per series in the task's order: RedBrick matches them by position.
        entries = convert.positional(found, names) if any(found) else []
        entries = with_confidence_attribute(entries, confidence, self.project.taxonomy)
        payload_path = folder / "series.json"
        payload = {"taskId": task.task_id, "series": entries, "confidence": confidence}
        _write_json(payload_path, {**payload, "dropped": list(dropped)})
        files["payload"] = str(payload_path)
        return entries

    def _preview(
        self, path: Path, series: FetchedSeries, label_map: npt.NDArray[np.integer], task: Task
    ) -> None:
        """The preview PNG of one series: on :attr:`previews` if set, else now."""
        from autolabel.report.overlay import save_overlay  # Pillow, on first use

        volume = series.volume
        title = f"{task.name} · {series.name or series.index} · {self.key}"
        names = dict(self.model.spec.labels)

        def render() -> object:
            return save_overlay(
                path, np.asarray(volume.array), label_map, volume.spacing,
                orientation=volume.orientation, names=names, title=title,
            )  # fmt: skip

        if self.previews is None:
            render()
        else:
            self.previews.submit(path, render)

    def write(
        self,
        claim: WriteClaim,
        entries: Sequence[Mapping[str, Any]],
        *,
        on_in_doubt: Callable[[str], object] | None = None,
    ) -> Written:
        """Save or submit ``entries`` under ``claim`` (see
        :func:`autolabel.pipeline.submit.write_task`; the claim's route says which), then set
        the claim's task priority if it has one; ``on_in_doubt(reason)`` records that a
        sent write's reply was lost. A priority RedBrick refuses does not undo the write:
        it is the returned :class:`Written`'s note."""
        began = time.perf_counter()
        write_task(
            self.project,
            claim.task_id,
            self.options.stage,
            entries,
            finalize=claim.finalize,
            before=claim.before,
            provenance=self.provenance,
            stamp=self.stamp,
            settle_window_s=self.settle_window_s,
            record_intent=claim.check,
            record_in_doubt=on_in_doubt,
        )
        note = ""
        if claim.priority is not None:
            try:
                self.project.upload.update_tasks_priority(
                    [{"taskId": claim.task_id, "priority": claim.priority}]
                )
            except PlatformError as exc:
                if isinstance(exc, AuthError):
                    raise
                note = (
                    f"the draft is saved but its priority {claim.priority} was not set "
                    f"({exc}); set it in RedBrick, or run again with --prioritize --force"
                )
        return Written(time.perf_counter() - began, note)


def _with_retries(fetch: Callable[[], FetchedTask], attempts: int = 3) -> FetchedTask:
    """Fetch again after a transient failure (the client already retried each request; a
    fresh try also presigns the items again)."""
    for attempt in range(1, attempts + 1):
        try:
            return fetch()
        except PlatformError as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _counts(
    label_map: npt.NDArray[np.integer], segment_map: convert.SegmentMap
) -> npt.NDArray[np.int64] | None:
    """:func:`autolabel.inference.spec.label_counts`, or None for a map that is not a 3-D integer
    map within the model's ids (:func:`autolabel.convert.to_series` then says what is wrong
    with it, before anything the size of its largest value is allocated)."""
    array = np.asarray(label_map)
    if array.ndim != 3 or array.size == 0:
        return None
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        return None
    high = int(array.max())
    if high > max(segment_map.values, default=0):
        return None
    try:
        return label_counts(array, high=high)
    except ValueError:  # negative values
        return None


def _volumes_ml(
    counts: npt.NDArray[np.int64] | None,
    label_map: npt.NDArray[np.integer],
    volume: Volume,
    segment_map: convert.SegmentMap,
) -> dict[str, float]:
    """Predicted millilitres per taxonomy category (model classes mapped as written)."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    if counts is None:
        counts = label_counts(label_map)  # to_series checked the values
    out: dict[str, float] = {}
    for label_id, value in segment_map.values.items():
        if value and label_id < counts.size and counts[label_id]:
            category = segment_map.categories[value].name
            out[category] = out.get(category, 0.0) + float(counts[label_id]) * voxel_ml
    return out


def _plain(event: object) -> dict[str, Any]:
    """A device event (:class:`autolabel.inference.device.DeviceEvent`) as a dict."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return dataclasses.asdict(event)
    return {"event": str(event)}


def _write_json(path: Path, payload: Any) -> None:
    with atomic_file(path) as stream:
        stream.write(json.dumps(payload, indent=2, sort_keys=True).encode("utf-8"))

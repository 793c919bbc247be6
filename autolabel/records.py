"""Value types that cross the seams of the pipeline (numpy only, no heavy imports).

Geometry convention, used everywhere in autolabel:

* ``Volume.array`` is 3-D and indexed ``[i, j, k]``. For a DICOM series it is the layout of
  the NIfTI that ``dicom2nifti`` writes with its default ``reorient_nifti=True`` (as the
  RedBrick SDK calls it), which is what RedBrick maps label files onto (export-format.md
  §2.6): ``i`` runs to the patient's Left, ``j`` Anterior, ``k`` Superior (nearest voxel
  axes; "LAS"), so a plain axial series is [column, reversed row, slice]. The rule and its
  evidence live in ``autolabel.imaging.layout``. For a NIfTI source it is the file's own
  array order, never reoriented.
* ``Volume.affine`` maps a voxel index ``(i, j, k, 1)`` to world millimetres in the NIfTI
  RAS+ convention (x to patient Left→Right, y Posterior→Anterior, z Inferior→Superior).
* A label map for a volume is an integer array of exactly ``Volume.shape`` on that grid.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class Volume:
    """One image series as a voxel array on its own grid.

    ``source`` names where it came from (task and series, or a path) for error messages.
    ``slice_items`` lists the item (file) each DICOM slice was read from, in increasing
    index along ``slice_axis`` (the array axis the DICOM slices run along: 2 for an axial
    series, 0 for a sagittal one); it is empty for NIfTI inputs. The array is owned by the
    volume: callers must not modify it.
    ``qform``, ``qform_code`` and ``sform_code`` are the NIfTI header geometry that label
    files for this volume carry (``affine`` is always written as the sform).
    """

    array: npt.NDArray[np.generic]
    affine: npt.NDArray[np.float64]
    modality: str = ""
    source: str = ""
    slice_items: tuple[str, ...] = field(default=())
    slice_axis: int = 2
    #: NIfTI header geometry to give label files: for NIfTI sources the source's own qform
    #: (None: same as ``affine``) and codes; the defaults are what dicom2nifti writes.
    qform: npt.NDArray[np.float64] | None = None
    qform_code: int = 0
    sform_code: int = 2

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts along ``i, j, k``."""
        i, j, k = self.array.shape
        return (int(i), int(j), int(k))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along ``i, j, k`` (column norms of the affine)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        """Three-letter RAS axis codes of ``i, j, k`` (e.g. ``"LPS"`` for plain axial DICOM)."""
        codes = (("L", "R"), ("P", "A"), ("I", "S"))
        letters = []
        for axis in range(3):
            column = self.affine[:3, axis]
            dominant = int(np.argmax(np.abs(column)))
            letters.append(codes[dominant][1 if column[dominant] > 0 else 0])
        return "".join(letters)

    def world_to_voxel(self, point: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The (fractional) voxel index of a world RAS+ point in millimetres."""
        inverse = np.linalg.inv(self.affine)
        homogeneous = np.append(np.asarray(point, dtype=np.float64), 1.0)
        return np.asarray(inverse @ homogeneous, dtype=np.float64)[:3]


# -- what the ledger records (:mod:`autolabel.ledger`) ----------------------------------------


class TaskState(str, enum.Enum):
    """State of a task under one model; see the module docstring for the protocol."""

    QUEUED = "queued"
    FETCHED = "fetched"
    PREDICTED = "predicted"
    CONVERTED = "converted"
    WRITING = "writing"
    DRAFT_SAVED = "draft_saved"
    SUBMITTED = "submitted"
    SKIPPED = "skipped"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    #: ``autolabel undo`` is about to revert a run's write (the intent, committed first).
    UNDOING = "undoing"
    #: ``autolabel undo`` reverted the write (``detail["restored"]`` says to what).
    UNDONE = "undone"


class Mode(str, enum.Enum):
    """What a run does with a task's labels: save a draft, submit them, or write nothing to
    RedBrick (``dry-run``: keep the payload locally). Compares and prints as its value."""

    DRAFT = "draft"
    FINAL = "final"
    DRY_RUN = "dry-run"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)

    def __hash__(self) -> int:  # as its text, so it finds the entries keyed by it
        return hash(self.value)

    @property
    def written(self) -> TaskState:
        """The state a task reaches when this mode's write is done (the one such rule)."""
        return _WRITTEN_BY_MODE[self]


_WRITTEN_BY_MODE = {
    Mode.DRAFT: TaskState.DRAFT_SAVED,
    Mode.FINAL: TaskState.SUBMITTED,
    Mode.DRY_RUN: TaskState.DRY_RUN,
}
#: The run modes, as text.
MODES: tuple[str, ...] = tuple(m.value for m in Mode)
#: The mode of an ``autolabel undo`` invocation in the ledger's ``runs`` (not a run mode).
UNDO_MODE = "undo"
#: Every mode a ``runs`` row may have.
LEDGER_MODES: tuple[str, ...] = (*MODES, UNDO_MODE)

#: States that mean "this mode's work is done" for :meth:`Ledger.is_done`.
DONE_STATES: dict[str, frozenset[TaskState]] = {
    "draft": frozenset({TaskState.DRAFT_SAVED, TaskState.SUBMITTED}),
    "final": frozenset({TaskState.SUBMITTED}),
    "dry-run": frozenset({TaskState.DRY_RUN}),
}


@dataclass(frozen=True, slots=True)
class ModelKey:
    """Identity of a model: name, version and the hash of its weights (may be empty)."""

    name: str
    version: str
    weights_hash: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(
                f"a model needs a name and a version, got {self.name!r}, {self.version!r}"
            )

    def __str__(self) -> str:
        suffix = f" ({self.weights_hash[:12]})" if self.weights_hash else ""
        return f"{self.name} {self.version}{suffix}"

    def _params(self) -> tuple[str, str, str]:
        return (self.name, self.version, self.weights_hash)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change of a task under a model, as stored (``at`` in Unix seconds)."""

    seq: int
    run_id: str
    task_id: str
    task_name: str
    model: ModelKey
    mode: str
    state: TaskState
    at: float
    input_checksum: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One invocation of autolabel as recorded in the ledger."""

    run_id: str
    started_at: float
    finished_at: float | None
    status: str
    mode: str
    command: tuple[str, ...]
    options: Mapping[str, Any]
    model: ModelKey | None


@dataclass(frozen=True, slots=True)
class StepTiming:
    """Durations (``detail["seconds"]``) of the steps that ended in one state."""

    count: int
    total_seconds: float
    max_seconds: float

    @property
    def mean_seconds(self) -> float:
        """Average duration, 0 when nothing was timed."""
        return self.total_seconds / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Latest state of each (task, model) pair, over one run or the whole ledger.

    ``counts`` maps a state value to the number of pairs whose latest event has it;
    ``failures`` are the latest events of the pairs that ended ``failed``; ``timings`` holds
    the recorded step durations per state over all events considered.
    """

    counts: Mapping[str, int]
    failures: tuple[TaskEvent, ...]
    timings: Mapping[str, StepTiming]
    runs: tuple[RunInfo, ...]

    @property
    def total(self) -> int:
        """Number of (task, model) pairs."""
        return sum(self.counts.values())

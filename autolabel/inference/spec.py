"""The model contract: what a model declares (:class:`ModelSpec`) and what it must return.

No torch here: the pipeline and the converter read specs without loading a model.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from autolabel.errors import BadModelOutputError
from autolabel.records import Volume

#: Largest label id a model may declare (label files are uint8 or uint16).
MAX_LABEL_ID = 65535


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The static declaration of a segmentation model.

    * ``name`` and ``version`` identify the model in the ledger; ``weights_sha256`` is the
      sha256 of the weights file(s) it was loaded from (empty when it has none), for
      provenance.
    * ``labels`` maps the model's own label ids (1..65535) to unique, non-empty names; 0 is
      always background and never declared.
    * ``categories`` maps a subset of those ids to taxonomy category names: the default
      mapping the converter uses (ids missing from it are mapped by ``labels`` name).
    * ``modality`` is the DICOM modality the model expects (``"CT"``, ``"MR"``, or ``""``
      for any); ``expected_input`` says in words what it was trained on.

    A spec that breaks these rules raises :class:`BadModelOutputError` when built.
    """

    name: str
    version: str
    labels: Mapping[int, str]
    categories: Mapping[int, str] = field(default_factory=dict)
    modality: str = ""
    expected_input: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise BadModelOutputError("model spec has an empty name")
        if not self.labels:
            raise BadModelOutputError(f"model {self.name!r}: spec declares no labels")
        seen: set[str] = set()
        for label_id, label_name in self.labels.items():
            if not isinstance(label_id, int) or not 1 <= label_id <= MAX_LABEL_ID:
                raise BadModelOutputError(
                    f"model {self.name!r}: label id {label_id!r} is not an integer in "
                    f"1..{MAX_LABEL_ID} (0 is background)"
                )
            if not label_name or label_name in seen:
                raise BadModelOutputError(
                    f"model {self.name!r}: label {label_id} has an empty or duplicate name "
                    f"{label_name!r}"
                )
            seen.add(label_name)
        unknown = sorted(set(self.categories) - set(self.labels))
        if unknown:
            raise BadModelOutputError(
                f"model {self.name!r}: categories map label ids {unknown} the spec does not declare"
            )
        # Freeze the mappings so that a spec shared between threads cannot change.
        object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "categories", types.MappingProxyType(dict(self.categories)))

    @property
    def label_dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned dtype holding every label id (uint8 or uint16)."""
        return np.uint8 if max(self.labels) <= 255 else np.uint16

    def category_of(self, label_id: int) -> str:
        """The taxonomy category for ``label_id``: the default mapping, else the label name."""
        return self.categories.get(label_id, self.labels[label_id])


@runtime_checkable
class SegmentationModel(Protocol):
    """What the pipeline needs from a model: its spec and ``predict``.

    ``predict(volume)`` returns an integer label map of exactly ``volume.shape`` on the
    volume's own grid, with values in ``{0} | set(spec.labels)``. The caller owns the
    returned array and may modify it. A model object is loaded once and reused for every
    volume; ``predict`` must not keep references to earlier volumes.
    """

    @property
    def spec(self) -> ModelSpec: ...

    def predict(self, volume: Volume) -> npt.NDArray[np.integer]: ...


def validate_output(spec: ModelSpec, volume: Volume, output: object) -> npt.NDArray[np.integer]:
    """Check a model's output against its spec and the input volume; return it as an array.

    Raises :class:`BadModelOutputError`, naming the model, when the output is not a numpy
    integer array of ``volume.shape`` or holds a value that is neither 0 nor a declared label.
    """
    where = f"model {spec.name!r} on {volume.source or 'a volume'}"
    if not isinstance(output, np.ndarray):
        raise BadModelOutputError(f"{where}: returned {type(output).__name__}, not a numpy array")
    if output.dtype == np.bool_ or not np.issubdtype(output.dtype, np.integer):
        raise BadModelOutputError(f"{where}: label map dtype {output.dtype} is not an integer type")
    if output.shape != volume.shape:
        raise BadModelOutputError(
            f"{where}: label map shape {output.shape} differs from the volume's {volume.shape}"
        )
    bad = _values_outside(output, spec)
    if bad:
        raise BadModelOutputError(
            f"{where}: label map holds values {bad} that are not in its spec "
            f"(allowed: 0 and {sorted(spec.labels)})"
        )
    return output


#: Voxels per step of the lookup in :func:`_values_outside` (bounds its temporary mask).
_LOOKUP_CHUNK = 1 << 22


def _values_outside(output: npt.NDArray[np.integer], spec: ModelSpec) -> list[int]:
    """The values of ``output`` that are neither 0 nor a label of ``spec``, sorted.

    One pass for the range (``max``; ``min`` only for signed dtypes); when every id from 0
    to the maximum is allowed (labels ``1..N``, the common case) that settles it. Otherwise
    a lookup table over slabs of about :data:`_LOOKUP_CHUNK` voxels, so the temporary mask
    stays a few MB whatever the volume's size (no copy of the map, no int64 counts).
    """
    if not output.size:
        return []
    allowed = np.zeros(max(spec.labels) + 1, dtype=bool)
    allowed[0] = True
    allowed[list(spec.labels)] = True
    high = int(output.max())
    low = int(output.min()) if np.issubdtype(output.dtype, np.signedinteger) else 0
    if low < 0 or high >= allowed.size:
        return sorted({v for v in (low, high) if v < 0 or v >= allowed.size})
    if allowed[: high + 1].all():
        return []
    # Slabs along the last axis: views of any layout, never a copy of the whole map.
    step = max(1, _LOOKUP_CHUNK // max(1, output[..., 0].size))
    found: set[int] = set()
    for start in range(0, output.shape[-1], step):
        chunk = output[..., start : start + step]
        ok = allowed[chunk]
        if not ok.all():
            found.update(int(v) for v in np.unique(chunk[~ok]))
    return sorted(found)


def label_counts(
    label_map: npt.NDArray[Any], minlength: int = 0, *, high: int | None = None
) -> npt.NDArray[np.int64]:
    """Voxel count of every value ``0..max`` of a non-negative integer (or bool) label map
    (at least ``minlength`` counts), read in cache-sized chunks (no copy of a C- or
    F-contiguous map; another view is flattened once); up to
    7 values by one compare each (3x faster than ``bincount``, which copies every voxel to
    intp). ``high``: the map's maximum, when the caller has it (saves that pass; a wrong
    one miscounts). ``ValueError`` if negative."""
    flat = np.asarray(label_map).ravel(order="K")  # a view for C- or F-contiguous maps
    flat = flat.view(np.uint8) if flat.dtype == np.bool_ else flat
    top = int(flat.max(initial=0)) if high is None else high
    hi = max(top, minlength - 1)
    if np.issubdtype(flat.dtype, np.signedinteger) and int(flat.min(initial=0)) < 0:
        raise ValueError("label_counts: the label map holds negative values")
    counts = np.zeros(hi + 1, dtype=np.int64)
    for start in range(0, flat.size, 1 << 18):
        chunk = flat[start : start + (1 << 18)]
        if hi < 8:
            counts[1:] += np.array([np.count_nonzero(chunk == v) for v in range(1, hi + 1)], int)
        else:
            counts += np.bincount(chunk, minlength=hi + 1)
    if hi < 8:
        counts[0] = flat.size - int(counts[1:].sum())
    return counts

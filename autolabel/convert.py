"""Label map + model labels + taxonomy -> one RedBrick ``series`` entry (export-format.md §1, §3).

Two steps, both pure apart from writing the label file:

* :func:`build_segment_map` decides, once per model and project, which taxonomy category
  each model class becomes (by name or ``classId``; dropped with ``None``), and numbers the
  kept categories compactly from 1.
* :func:`to_series` validates a model's label map against the image, renumbers it with
  one lookup table, optionally splits it into instances, writes the label file on the
  image's grid and returns ``{"name", "segmentations", "segmentMap"}``.

numpy/scipy only; the label file is written by :func:`autolabel.imaging.write_label_nifti`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from autolabel import imaging
from autolabel.errors import ConfigError, ConversionError
from autolabel.inference.spec import label_counts
from autolabel.records import Volume

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: A mapping target: a category name, a ``classId``, or ``None`` to drop the class.
Target = str | int | None
EmptyPolicy = Literal["skip", "submit"]
_MAX_VALUE = 65535


class SegmentEntry(TypedDict):
    """One ``segmentMap`` value: the taxonomy category of a voxel value."""

    category: str


class _SeriesRequired(TypedDict):
    name: str
    segmentations: str
    segmentMap: dict[str, SegmentEntry]


class SeriesEntry(_SeriesRequired, total=False):
    """A ``series`` entry as ``put_tasks`` takes it (export-format.md §1.3)."""

    metaData: dict[str, str]


def positional(
    entries: Sequence[Mapping[str, Any] | None], names: Sequence[str]
) -> list[dict[str, Any]]:
    """One ``series`` entry per series of the task, in the task's series order.

    RedBrick matches the labels list to the task's series by position (the SDK enumerates
    ``labelsMap``, redbrick/utils/upload.py ``process_segmentation_upload``), so a series
    with no labels keeps its place: ``entries[i]`` is None there and becomes
    ``{"name": names[i]}``, an entry without ``segmentations`` (its ``labelsMap`` slot is
    null, as the SDK sends it). ``entries`` and ``names`` have one item per series.
    """
    if len(entries) != len(names):
        raise ValueError(f"{len(entries)} entries for {len(names)} series")
    return [dict(e) if e is not None else {"name": n} for e, n in zip(entries, names, strict=True)]


def has_labels(entries: Sequence[Mapping[str, Any]]) -> bool:
    """True when some entry of :func:`positional`'s list carries a label file."""
    return any(e.get("segmentations") for e in entries)


@dataclass(frozen=True)
class Category:
    """A taxonomy V2 object type of label type SEGMENTATION."""

    name: str
    class_id: int


@dataclass(frozen=True)
class SegmentMap:
    """Which output value each model label id becomes, and each value's category.

    ``values`` maps every declared model id to its output value (0 = dropped);
    ``categories`` maps output values 1..n to their :class:`Category`.
    """

    values: Mapping[int, int]
    categories: Mapping[int, Category]

    def lookup_table(self) -> npt.NDArray[np.uint16]:
        """``table[model_id] = output value``; ids not declared map to 0 (checked elsewhere)."""
        table = np.zeros(max(self.values, default=0) + 1, dtype=np.uint16)
        for model_id, value in self.values.items():
            table[model_id] = value
        return table


def _object_types(taxonomy: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Any]:
    if isinstance(taxonomy, Mapping):
        if "objectTypes" not in taxonomy:
            raise ConversionError(
                f"taxonomy {taxonomy.get('name', '')!r} has no objectTypes: only Taxonomy V2 "
                "is supported (RedBrick no longer creates V1 taxonomies)."
            )
        return list(taxonomy["objectTypes"] or [])
    return list(taxonomy)


def _describe(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('category')!r} (classId {obj.get('classId')}, {obj.get('labelType')})"


def _usable(obj: Mapping[str, Any]) -> bool:
    return obj.get("labelType") == "SEGMENTATION" and not obj.get("archived", False)


def _pick(found: list[Any], wanted: str, why: str) -> Category:
    usable = [o for o in found if _usable(o)]
    if len(usable) == 1:
        return Category(str(usable[0]["category"]), int(usable[0]["classId"]))
    if len(usable) > 1:
        raise ConversionError(
            f"{why}: {wanted!r} matches several segmentation categories "
            f"({', '.join(_describe(o) for o in usable)}); use the exact name or the classId."
        )
    reasons = ", ".join(f"{_describe(o)}{' archived' if o.get('archived') else ''}" for o in found)
    raise ConversionError(
        f"{why}: {wanted!r} is {reasons} in the taxonomy, not a usable SEGMENTATION "
        "category; map it to a segmentation category or drop it (null)."
    )


def _resolve(objects: list[Any], target: str | int, why: str) -> Category | None:
    """The category ``target`` names (exact name, unambiguous any-case name, or classId)."""
    if not isinstance(target, str):
        by_id = [o for o in objects if int(o.get("classId", -1)) == target]
        return _pick(by_id, f"classId {target}", why) if by_id else None
    exact = [o for o in objects if o.get("category") == target]
    if exact:
        return _pick(exact, target, why)
    folded = [o for o in objects if str(o.get("category", "")).casefold() == target.casefold()]
    if folded:
        return _pick(folded, target, why)
    if target.strip().isdigit():
        return _resolve(objects, int(target), why)
    return None


def _mapping_target(
    mapping: Mapping[str | int, Target], model_id: int, name: str
) -> tuple[bool, Target]:
    for key in (name, model_id, str(model_id)):
        if key in mapping:
            return True, mapping[key]
    return False, None


def build_segment_map(
    model_labels: Mapping[int, str],
    taxonomy: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    mapping: Mapping[str | int, Target] | None = None,
    *,
    allow_unmapped: bool = False,
) -> SegmentMap:
    """Decide the taxonomy category of every model class.

    Contract:

    * ``model_labels`` maps model label ids (1..65535; 0 is background and ignored) to
      class names. ``taxonomy`` is the project's taxonomy as the API returns it (V2, with
      ``objectTypes``), or just its ``objectTypes`` list.
    * ``mapping`` (optional) is keyed by model class name or id (so a
      :class:`~autolabel.inference.spec.ModelSpec`'s ``categories`` can be passed as it
      is) and gives a category name,
      a ``classId`` (int, or digits when no category has that name) or ``None`` to drop
      the class. Classes not in it are matched by their own name.
    * Names match exactly, else case-insensitively when that picks one category. The
      category must be a non-archived SEGMENTATION object type.
    * A class that matches nothing raises :class:`ConversionError` listing every such class
      and the available categories, unless ``allow_unmapped`` (then it is dropped). An
      explicit mapping to a missing or unusable category is always an error; mapping keys
      that name no model class raise :class:`ConfigError`.
    * Kept categories get output values 1..n in order of their first model id; classes
      mapped to the same category share its value.
    """
    bad_ids = [i for i in model_labels if not 0 <= i <= _MAX_VALUE]
    if bad_ids:
        raise ValueError(f"model label ids must lie in 0..{_MAX_VALUE}, got {bad_ids}")
    objects = _object_types(taxonomy)
    mapping = dict(mapping or {})
    known = {*model_labels.values(), *model_labels, *(str(i) for i in model_labels)}
    stray = [k for k in mapping if k not in known]
    if stray:
        raise ConfigError(
            f"the category mapping names classes the model does not have: {stray}; "
            f"model classes: {sorted(model_labels.values())}"
        )
    values: dict[int, int] = {}
    categories: dict[int, Category] = {}
    unmapped: list[str] = []
    for model_id in sorted(i for i in model_labels if i != 0):
        name = model_labels[model_id]
        explicit, target = _mapping_target(mapping, model_id, name)
        if explicit and target is None:
            values[model_id] = 0
            continue
        wanted = target if explicit and target is not None else name
        why = f"model class {name!r} (id {model_id})"
        category = _resolve(objects, wanted, why)
        if category is None:
            if explicit:
                raise ConversionError(
                    f"{why} is mapped to {wanted!r}, which is not in the taxonomy; "
                    f"segmentation categories: {_available(objects)}"
                )
            unmapped.append(f"{name!r} (id {model_id})")
            values[model_id] = 0
            continue
        value = next((v for v, c in categories.items() if c == category), len(categories) + 1)
        categories[value] = category
        values[model_id] = value
    if unmapped and not allow_unmapped:
        raise ConversionError(
            f"model classes not found in the taxonomy: {', '.join(unmapped)}; segmentation "
            f'categories: {_available(objects)}. Map them (class = "Category"), drop them '
            "(null), or allow unmapped classes."
        )
    return SegmentMap(values=values, categories=categories)


def _available(objects: list[Any]) -> str:
    names = [f"{o['category']!r}" for o in objects if _usable(o)]
    return ", ".join(names) if names else "(none)"


def load_mapping(path: str | os.PathLike[str]) -> dict[str | int, Target]:
    """Read a category mapping file (``.toml`` or ``.json``): model class -> category.

    Keys are model class names (or ids); values are category names, classIds (integers),
    or ``null`` (JSON) / ``false`` (TOML, which has no null) to drop the class. The pairs
    may sit at the top level or under a ``classes`` table. Malformed files raise
    :class:`ConfigError`.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if file.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the category mapping {file}: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("classes"), dict):
        raw = raw["classes"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a category mapping must be a table of class = category")
    mapping: dict[str | int, Target] = {}
    for key, value in raw.items():
        if value is None or value is False or value == "":
            mapping[key] = None
        elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            mapping[key] = value
        else:
            raise ConfigError(
                f"{file}: class {key!r} maps to {value!r}; use a category name, a classId, "
                "or null/false to drop it"
            )
    return mapping


def _validate(
    label_map: npt.NDArray[Any], volume: Volume, affine: npt.ArrayLike | None, what: str
) -> None:
    """Shape, dtype and grid of a model's label map (values are checked while renumbering)."""
    if label_map.ndim != 3:
        raise ConversionError(f"{what}: the label map is {label_map.ndim}-D; it must be 3-D")
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == np.bool_):
        raise ConversionError(
            f"{what}: the label map has dtype {label_map.dtype}; it must hold integer ids"
        )
    if label_map.shape != volume.shape:
        raise ConversionError(
            f"{what}: the label map has shape {label_map.shape}, the image {volume.shape}; "
            "labels must be on the image's exact voxel grid"
        )
    if affine is not None and not np.allclose(
        np.asarray(affine, dtype=np.float64), volume.affine, atol=1e-3
    ):
        raise ConversionError(
            f"{what}: the label map's affine differs from the image's; resample it onto "
            "the image grid first"
        )


def _undeclared(values: Sequence[int], segment_map: SegmentMap, what: str) -> ConversionError:
    declared = sorted({0, *segment_map.values})
    return ConversionError(
        f"{what}: the label map holds values {list(values)[:10]} that the model does not "
        f"declare (declared: {declared}); fix the model's spec or its output"
    )


def _id_counts(
    indices: npt.NDArray[Any],
    segment_map: SegmentMap,
    what: str,
    counts: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[Any]:
    """Voxel count of every id in the map (``counts``: the caller's :func:`label_counts` of
    it), raising for ids the model does not declare."""
    declared = {0, *segment_map.values}
    if counts is None:
        if np.issubdtype(indices.dtype, np.signedinteger) and int(indices.min()) < 0:
            raise _undeclared(np.unique(indices[indices < 0]).tolist(), segment_map, what)
        if int(indices.max()) > max(declared):
            raise _undeclared([int(indices.max())], segment_map, what)
        counts = label_counts(indices)
    unknown = sorted(set(np.flatnonzero(counts).tolist()) - declared)
    if unknown:
        raise _undeclared(unknown, segment_map, what)
    return counts


def _renumber(indices: npt.NDArray[Any], segment_map: SegmentMap) -> npt.NDArray[Any]:
    """One lookup-table pass, keeping the memory order (F stays F); none if already compact."""
    table = segment_map.lookup_table()
    if np.array_equal(table, np.arange(table.size)) and indices.dtype in (np.uint8, np.uint16):
        return indices
    lut = table.astype(np.uint8) if int(table.max(initial=0)) <= 255 else table
    out: npt.NDArray[Any] = lut[indices]
    return out


def _components(
    out: npt.NDArray[Any], value: int
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.int32], int] | None:
    """26-connected components of ``out == value`` inside its bounding box."""
    mask = out == value
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        spans.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = (spans[0], spans[1], spans[2])
    from scipy import ndimage  # only --instances needs scipy: imported on first use

    structure = ndimage.generate_binary_structure(3, 3)
    components, count = ndimage.label(mask[box], structure=structure)
    return box, components, int(count)


def _instances(
    out: npt.NDArray[Any], categories: Mapping[int, Category], what: str
) -> tuple[npt.NDArray[Any], dict[str, SegmentEntry]]:
    """Split each category into connected components numbered 1..N across categories."""
    parts = []
    total = 0
    for value in sorted(categories):
        found = _components(out, value)
        if found is None:
            continue
        box, components, count = found
        parts.append((box, components, total, categories[value]))
        total += count
    if total > _MAX_VALUE:
        raise ConversionError(
            f"{what}: {total} instances exceed the 65535 a label file can hold; raise the "
            "minimum component size or use semantic labels"
        )
    result = np.zeros(out.shape, dtype=np.uint8 if total <= 255 else np.uint16, order="F")
    segment_map: dict[str, SegmentEntry] = {}
    for box, components, offset, category in parts:
        region = result[box]
        inside = components > 0
        region[inside] = components[inside] + offset
        for n in range(1, int(components.max(initial=0)) + 1):
            segment_map[str(offset + n)] = {"category": category.name}
    return result, segment_map


def to_series(
    label_map: npt.NDArray[Any],
    volume: Volume,
    segment_map: SegmentMap,
    *,
    name: str,
    path: str | os.PathLike[str],
    empty: EmptyPolicy = "skip",
    instances: bool = False,
    min_component_voxels: int = 0,
    affine: npt.ArrayLike | None = None,
    counts: npt.NDArray[np.int64] | None = None,
) -> SeriesEntry | None:
    """Turn a model's label map into a RedBrick series entry and its label file.

    ``counts``: :func:`label_counts` of ``label_map``, when the caller has them.

    Contract:

    * ``label_map`` holds the model's own label ids on ``volume``'s grid (integer or bool,
      3-D, ``volume.shape``; ``affine``, when given, must equal ``volume.affine``). Any
      violation, or a value the model does not declare, raises :class:`ConversionError`.
    * Values are renumbered through ``segment_map`` in one lookup (dropped classes -> 0).
      Components smaller than ``min_component_voxels`` (26-connected) are removed.
    * Semantic by default: one value per category, ``segmentMap`` ``{"1": {"category":
      ...}, ...}``. With ``instances=True`` every connected component is its own value.
    * Nothing labelled (after dropping): ``empty="skip"`` writes nothing and returns
      ``None``; ``"submit"`` writes the empty file with an empty ``segmentMap``.
    * The label file is written (atomically) at ``path`` on the image's exact grid; the
      entry's ``segmentations`` is that path.
    """
    if empty not in ("skip", "submit"):
        raise ValueError(f"empty must be 'skip' or 'submit', got {empty!r}")
    if min_component_voxels < 0:
        raise ValueError("min_component_voxels must be >= 0")
    what = f"{volume.source or 'volume'} / series {name!r}"
    array = np.asarray(label_map)
    _validate(array, volume, affine, what)
    indices = array.view(np.uint8) if array.dtype == np.bool_ else array
    counts = _id_counts(indices, segment_map, what, counts)
    table = segment_map.lookup_table()
    present = sorted({int(table[i]) for i in np.flatnonzero(counts)} - {0})
    out = _renumber(indices, segment_map)
    if min_component_voxels > 1 and present:
        out = out.copy(order="K") if out is indices else out
        from autolabel.inference.postprocess import remove_small  # scipy, on first use

        remove_small(out, min_component_voxels)
        present = [v for v in present if bool(np.any(out == v))]
    if instances:
        out, entries = _instances(out, {v: segment_map.categories[v] for v in present}, what)
    else:
        entries = {str(v): {"category": segment_map.categories[v].name} for v in present}
    if not entries and empty == "skip":
        return None
    largest = None if instances else max(present, default=0)  # the values of ``out``
    written = imaging.write_label_nifti(out, volume, path, max_value=largest)
    entry: SeriesEntry = {"name": name, "segmentations": str(written), "segmentMap": entries}
    return entry

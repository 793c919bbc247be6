"""``validateAndConvertToImportFormat``: the series format to RedBrick's internal labels.

The SDK sends tasks in the ``series`` format (export-format.md §1) and expects them back
converted (protocol §4.2): ``items`` concatenated, positional ``seriesInfo`` and
``labelsMap``, and ``labels`` as internal objects (§4.5). Categories are resolved against
the taxonomy's V2 ``objectTypes`` by name, ``classId``, path (``[...parents, name]``) or the
full ``{"category": ...}`` object; anything that does not resolve makes the whole batch
invalid with a message that names the task, the series and the category.
"""

from __future__ import annotations

import json
from typing import Any

_SEGMENTATION = "SEGMENTATION"

#: Series keys the converter understands; any other annotation key is refused by name.
_SERIES_KEYS = frozenset(
    {
        "name",
        "items",
        "metaData",
        "imageHeaders",
        "segmentations",
        "segmentMap",
        "binaryMask",
        "semanticMask",
        "pngMask",
        "landmarks3d",
        "measurements",
        "classifications",
        "dataType",
    }
)


class InvalidImport(Exception):
    """The input is not valid; the message is returned as ``error`` with ``isValid:false``."""


def _attributes(values: Any) -> list[dict[str, Any]]:
    if not values:
        return []
    if not isinstance(values, dict):
        raise InvalidImport(f"attributes must be an object of name: value, got {values!r}")
    return [{"name": name, "value": value} for name, value in values.items()]


def find_object_type(
    taxonomy: dict[str, Any], category: Any, *, label_type: str | None, where: str
) -> dict[str, Any]:
    """The taxonomy object type a ``category`` refers to (name, classId or name path)."""
    objects = [o for o in taxonomy.get("objectTypes") or [] if not o.get("archived")]
    if label_type is not None:
        objects = [o for o in objects if o.get("labelType") == label_type]
    if isinstance(category, bool):
        matches = []
    elif isinstance(category, int):
        matches = [o for o in objects if o.get("classId") == category]
    elif isinstance(category, str):
        matches = [o for o in objects if o.get("category") == category]
    elif isinstance(category, list) and category and all(isinstance(c, str) for c in category):
        parents = list(category[:-1])
        matches = [
            o
            for o in objects
            if o.get("category") == category[-1] and (not parents or o.get("parents") == parents)
        ]
    else:
        raise InvalidImport(
            f"{where}: category must be a name, a classId or a path, got {category!r}"
        )
    if not matches:
        kind = f"{label_type.lower()} " if label_type else ""
        known = ", ".join(sorted(str(o.get("category")) for o in objects))
        raise InvalidImport(
            f"{where}: category {category!r} is not a {kind}category of taxonomy"
            f" {taxonomy.get('name')!r} (known: {known})"
        )
    found: dict[str, Any] = matches[0]
    return found


def _label(obj_type: dict[str, Any], volume: int, attributes: Any) -> dict[str, Any]:
    return {
        "category": obj_type["category"],
        "classid": obj_type["classId"],
        "attributes": _attributes(attributes),
        "volumeindex": volume,
    }


def _segment_labels(
    series: dict[str, Any], volume: int, taxonomy: dict[str, Any], where: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    labels: list[dict[str, Any]] = []
    masks: dict[str, Any] = {}
    segment_map = series.get("segmentMap") or {}
    if not isinstance(segment_map, dict):
        raise InvalidImport(f"{where}: segmentMap must be an object of instance id: category")
    for key, value in segment_map.items():
        try:
            instance = int(key)
        except (TypeError, ValueError):
            instance = -1
        if not 1 <= instance <= 65535 or str(instance) != str(key).strip():
            raise InvalidImport(f"{where}: segmentMap key {key!r} is not an instance id 1..65535")
        props = value if isinstance(value, dict) else {"category": value}
        if "category" not in props:
            raise InvalidImport(f"{where}: segmentMap[{key!r}] has no category")
        obj_type = find_object_type(
            taxonomy,
            props["category"],
            label_type=_SEGMENTATION,
            where=f"{where} segmentMap[{key!r}]",
        )
        label = _label(obj_type, volume, props.get("attributes"))
        label["dicom"] = {"instanceid": instance, "groupids": props.get("overlappingGroups")}
        if props.get("id"):
            label["labelid"] = props["id"]
        if props.get("mask"):
            masks[str(instance)] = props["mask"]
        labels.append(label)
    return labels, masks


def _vector_labels(
    series: dict[str, Any], volume: int, taxonomy: dict[str, Any], where: str
) -> list[dict[str, Any]]:
    labels = []
    for landmark in series.get("landmarks3d") or []:
        obj_type = find_object_type(
            taxonomy, landmark.get("category"), label_type=None, where=where
        )
        label = _label(obj_type, volume, landmark.get("attributes"))
        point = landmark.get("point") or {}
        label["point3d"] = {
            "pointx": point.get("i"),
            "pointy": point.get("j"),
            "pointz": point.get("k"),
        }
        labels.append(label)
    for measure in series.get("measurements") or []:
        obj_type = find_object_type(taxonomy, measure.get("category"), label_type=None, where=where)
        label = _label(obj_type, volume, measure.get("attributes"))
        ijk = [
            [p.get(a) for a in "ijk"]
            for p in (measure.get("point1") or {}, measure.get("point2") or {})
        ]
        if measure.get("type") == "angle":
            vertex = [(measure.get("vertex") or {}).get(a) for a in "ijk"]
            label["angle3d"] = {
                "point1": ijk[0],
                "point2": vertex,
                "point3": ijk[1],
                "normal": measure.get("normal"),
            }
        else:
            label["length3d"] = {
                "point1": ijk[0],
                "point2": ijk[1],
                "normal": measure.get("normal"),
            }
        labels.append(label)
    for classification in series.get("classifications") or []:
        labels.append(
            {
                "seriesclassify": True,
                "volumeindex": volume,
                "attributes": _attributes(classification.get("attributes")),
            }
        )
    return labels


def convert_task(task: dict[str, Any], taxonomy: dict[str, Any]) -> dict[str, Any]:
    """Convert one task of the series format; raises :class:`InvalidImport`."""
    if not isinstance(task, dict):
        raise InvalidImport(f"each task must be an object, got {type(task).__name__}")
    who = task.get("taskId") or task.get("name") or "(unnamed)"
    if "series" not in task:
        return task  # legacy flat format (items + labels): the SDK handles it itself
    if not isinstance(task["series"], list):
        raise InvalidImport(f"Task {who}: series must be a list")
    out = {k: v for k, v in task.items() if k not in ("series", "classification", "status")}
    items: list[str] = []
    series_info: list[dict[str, Any]] = []
    labels_map: list[dict[str, Any] | None] = []
    labels: list[dict[str, Any]] = []
    if task.get("classification"):
        attrs = _attributes(task["classification"].get("attributes"))
        labels.append({"studyclassify": True, "attributes": attrs})
    for volume, series in enumerate(task["series"]):
        where = f"Task {who} series {volume}"
        if not isinstance(series, dict):
            raise InvalidImport(f"{where}: must be an object")
        unknown = sorted(set(series) - _SERIES_KEYS)
        if unknown:
            raise InvalidImport(f"{where}: the emulator does not support {', '.join(unknown)}")
        raw_items = series.get("items") or []
        series_items = [raw_items] if isinstance(raw_items, str) else list(raw_items)
        indices = list(range(len(items), len(items) + len(series_items)))
        items += series_items
        segment_labels, masks = _segment_labels(series, volume, taxonomy, where)
        labels += segment_labels + _vector_labels(series, volume, taxonomy, where)
        series_info.append(
            {
                "name": series.get("name"),
                "itemsIndices": indices,
                "dataType": series.get("dataType"),
                "metaData": series.get("metaData"),
                "imageHeaders": series.get("imageHeaders"),
                "binaryMask": bool(series.get("binaryMask")),
                "semanticMask": bool(series.get("semanticMask")),
                "pngMask": bool(series.get("pngMask")),
                "masks": masks,
            }
        )
        segmentations = series.get("segmentations")
        labels_map.append(
            {"labelName": segmentations, "seriesIndex": volume} if segmentations else None
        )
    out.update(items=items, seriesInfo=series_info, labels=labels)
    if any(labels_map):
        out["labelsMap"] = labels_map
    return out


def validate_and_convert(original: str, taxonomy_for: Any) -> dict[str, Any]:
    """The ``validateAndConvertToImportFormat`` answer for a JSON list of tasks.

    ``taxonomy_for(task) -> dict`` picks the taxonomy a task is checked against (its
    project's); it may raise :class:`InvalidImport`.
    """
    try:
        tasks = json.loads(original)
        if not isinstance(tasks, list):
            raise InvalidImport("original must be a JSON list of tasks")
        converted = [convert_task(t, taxonomy_for(t)) for t in tasks]
    except json.JSONDecodeError as exc:
        return {"isValid": False, "error": f"original is not JSON: {exc}", "converted": None}
    except InvalidImport as exc:
        return {"isValid": False, "error": str(exc), "converted": None}
    return {"isValid": True, "error": None, "converted": json.dumps(converted)}

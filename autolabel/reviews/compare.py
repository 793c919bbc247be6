"""Compare label maps per taxonomy category: what review and audit decisions rest on.

Both sides are turned into the same form -- a label array plus ``{value: category}`` --
whether they are a person's labels read back from RedBrick or a model's prediction, and
are compared with the Dice coefficient per category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.convert import SegmentMap
from autolabel.errors import ConversionError


@dataclass(frozen=True)
class CategoryMap:
    """A label array and the taxonomy category of each of its non-zero values."""

    array: npt.NDArray[np.integer]
    categories: Mapping[int, str]

    def mask(self, category: str) -> npt.NDArray[np.bool_]:
        """Voxels of ``category`` (all values mapped to it)."""
        values = [v for v, c in self.categories.items() if c.lower() == category.lower()]
        if not values:
            return np.zeros(self.array.shape, dtype=bool)
        return np.isin(self.array, values)


def from_prediction(label_map: npt.NDArray[np.integer], segment_map: SegmentMap) -> CategoryMap:
    """A model's label map (its own ids) seen through the run's ``segment_map``."""
    categories = {
        model_id: segment_map.categories[value].name
        for model_id, value in segment_map.values.items()
        if value
    }
    return CategoryMap(label_map, categories)


def from_labels(
    array: npt.NDArray[np.integer], labels: Iterable[Mapping[str, Any]], series_index: int
) -> CategoryMap:
    """Stored labels of one series: the label file's ``array`` and the task's label objects.

    ``labels`` are RedBrick's internal label objects (``labelsData``); those with a
    ``dicom.instanceid`` on ``volumeindex == series_index`` name the category of each value.
    """
    categories: dict[int, str] = {}
    for label in labels:
        dicom = label.get("dicom") or {}
        if "instanceid" not in dicom or int(label.get("volumeindex") or 0) != series_index:
            continue
        category = label.get("category")
        if isinstance(category, list):  # a taxonomy path: the leaf is the category
            category = category[-1] if category else None
        if category:
            categories[int(dicom["instanceid"])] = str(category)
    return CategoryMap(array, categories)


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient of two masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_by_category(
    predicted: CategoryMap, reference: CategoryMap, categories: Iterable[str]
) -> dict[str, float]:
    """Dice per category in ``categories`` that is present on at least one side.

    Raises :class:`~autolabel.errors.ConversionError` when the two maps are not on the
    same grid (different shapes).
    """
    if predicted.array.shape != reference.array.shape:
        raise ConversionError(
            f"cannot compare labels of shape {reference.array.shape} with a prediction of "
            f"shape {predicted.array.shape}: the label file is not on the image's grid"
        )
    out: dict[str, float] = {}
    for category in dict.fromkeys(categories):
        a, b = predicted.mask(category), reference.mask(category)
        if a.any() or b.any():
            out[category] = round(dice(a, b), 4)
    return out


def describe(scores: Mapping[str, float]) -> str:
    """``"Liver 0.62, Spleen 0.91"``: scores in a comment, lowest first."""
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(scores.items(), key=_by_value))


def _by_value(item: tuple[str, float]) -> tuple[float, str]:
    return (item[1], item[0])

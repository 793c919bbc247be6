"""Label-map clean-up after inference: largest component, hole filling, minimum size.

Each step works per label, inside that label's bounding box, so its cost follows the
organ's size rather than the volume's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autolabel.inference.card import Postprocessing

LabelMap = npt.NDArray[np.integer]

#: Voxels per step of :func:`label_counts` (its int64 temporary is 8 bytes a voxel).
_COUNT_CHUNK = 1 << 22


def label_counts(labels: LabelMap, minlength: int = 0) -> npt.NDArray[np.int64]:
    """``np.bincount`` of a non-negative integer array of any shape and memory order.

    ``np.bincount`` first converts its input to int64 (8 bytes a voxel: 16x a uint8 map
    held twice), so this counts slabs of about 4 M voxels along the last axis and adds
    them up: the temporary stays ~32 MB whatever the array's size, and slabs of a C- or
    F-ordered array are read without copying. At least ``minlength`` counts are returned.
    """
    if labels.ndim == 0 or labels.size == 0:
        return np.zeros(minlength, dtype=np.int64)
    size = max(minlength, int(labels.max()) + 1)
    counts = np.zeros(size, dtype=np.int64)
    step = max(1, _COUNT_CHUNK // max(1, labels[..., 0].size))
    for start in range(0, labels.shape[-1], step):
        counts += np.bincount(labels[..., start : start + step].ravel(order="K"), minlength=size)
    return counts


def _box(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...] | None:
    found = ndimage.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def largest_component(labels: LabelMap, label: int) -> None:
    """Keep only the largest 26-connected component of ``label`` (others become 0)."""
    box = _box(labels == label)
    if box is None:
        return
    region = labels[box]
    parts, count = ndimage.label(region == label, structure=np.ones((3, 3, 3)))
    if count > 1:
        sizes = np.bincount(parts.ravel(order="K"))
        sizes[0] = 0
        region[(parts != 0) & (parts != int(sizes.argmax()))] = 0


def fill_holes(labels: LabelMap, label: int) -> None:
    """Fill background holes enclosed by ``label`` (3-D); other labels are left alone."""
    box = _box(labels == label)
    if box is None:
        return
    region = labels[box]
    mask = region == label
    filled = ndimage.binary_fill_holes(mask)
    region[filled & ~mask & (region == 0)] = label


def remove_small(labels: LabelMap, min_voxels: int) -> None:
    """Set every 26-connected component of a label smaller than ``min_voxels`` to 0."""
    if min_voxels <= 1:
        return
    for label in np.unique(labels):
        if label == 0:
            continue
        box = _box(labels == label)
        if box is None:
            continue
        region = labels[box]
        parts, _ = ndimage.label(region == label, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(parts.ravel(order="K"))
        small = sizes < min_voxels
        small[0] = False
        region[small[parts]] = 0


def postprocess(
    labels: LabelMap, rules: Postprocessing, spacing: tuple[float, float, float]
) -> LabelMap:
    """Apply a card's postprocessing to ``labels`` in place and return it.

    Order: minimum size (``min_size_mm3`` converted with ``spacing``), largest component,
    then hole filling, each for the labels the card names.
    """
    voxel_mm3 = float(np.prod(spacing))
    if rules.min_size_mm3 > 0:
        remove_small(labels, int(np.ceil(rules.min_size_mm3 / voxel_mm3)))
    for label in sorted(rules.largest_component):
        largest_component(labels, label)
    for label in sorted(rules.fill_holes):
        fill_holes(labels, label)
    return labels

"""The ``ct-threshold`` model: body, lungs and bone of a CT from Hounsfield units alone.

Steps, on the volume's own grid:

1. body: voxels above ``body_hu`` (between air at -1000 and the lightest lung), the largest
   6-connected component, with holes filled in every axial slice (airways count as inside);
2. lung: voxels below ``lung_hu`` inside the body (its outermost voxel layer excluded),
   keeping connected components of at least ``min_lung_ml`` (this drops sinuses and bowel
   gas);
3. bone: voxels at or above ``bone_hu`` inside the body.

Labels: 1 body (everything else inside it), 2 lung, 3 bone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autolabel.records import Volume


def _largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    parts, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return np.asarray(parts == int(sizes.argmax()))


def _fill_slices(mask: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    filled = np.moveaxis(mask.copy(), axis, 0)
    for index in range(filled.shape[0]):
        filled[index] = ndimage.binary_fill_holes(filled[index])
    return np.moveaxis(filled, 0, axis)


class CtThreshold:
    """HU thresholds from the card's ``[options]``; see the module docstring."""

    def __init__(self, *, card: Any, device: str) -> None:
        options = dict(card.options)
        self.body_hu = float(options.get("body_hu", -950.0))
        self.lung_hu = float(options.get("lung_hu", -400.0))
        self.min_lung_ml = float(options.get("min_lung_ml", 200.0))
        self.bone_hu = float(options.get("bone_hu", 226.0))

    def predict(self, volume: Volume) -> npt.NDArray[np.uint8]:
        """Labels 0..3 on the volume's grid."""
        hu: npt.NDArray[Any] = volume.array
        axial = next((i for i, c in enumerate(volume.orientation) if c in "SI"), 2)
        body = _fill_slices(_largest_component(hu > self.body_hu), axial)
        labels = body.astype(np.uint8)
        # The outermost body voxel is skin (or partial volume with the air outside): never lung.
        air, count = ndimage.label((hu < self.lung_hu) & ndimage.binary_erosion(body))
        if count:
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            sizes = np.bincount(air.ravel()) * voxel_ml
            sizes[0] = 0.0
            labels[(sizes >= self.min_lung_ml)[air]] = 2
        labels[(hu >= self.bone_hu) & body] = 3
        return labels

"""The ``ct-threshold`` model: body, lungs and bone of a CT from Hounsfield units alone.

Steps, on the volume's own grid:

1. body: voxels above ``body_hu`` (between air at -1000 and the lightest lung), the largest
   6-connected component, with holes filled in every axial slice (airways count as inside);
2. lung: voxels below ``lung_hu`` inside the body (its outermost voxel layer excluded),
   keeping connected components of at least ``min_lung_ml`` (this drops sinuses and bowel
   gas);
3. bone: voxels at or above ``bone_hu`` inside the body.

Labels: 1 body (everything else inside it), 2 lung, 3 bone.

Speed: scipy's labelling and morphology run fastest on C-contiguous arrays, and a DICOM
volume is F-ordered (``[i, j, k]`` with ``i`` fastest), so the work is done on the
transposed view (no copy) and the result transposed back. Holes are filled in all slices at
once: background components connected within a slice that do not touch the slice's border.
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
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    sizes[0] = 0
    return np.asarray(parts == int(sizes.argmax()))


def _fill_slices(mask: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    """``mask`` with the holes of each slice along ``axis`` filled (4-connected background)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    in_plane = [slice(None)] * 3
    in_plane[axis] = slice(1, 2)
    structure[tuple(in_plane)] = ndimage.generate_binary_structure(2, 1).reshape(
        structure[tuple(in_plane)].shape
    )
    background, count = ndimage.label(~mask, structure=structure)
    outside = np.zeros(count + 1, dtype=bool)
    for other in (a for a in range(3) if a != axis):
        for edge in (0, -1):
            index = [slice(None)] * 3
            index[other] = slice(edge, edge + 1) if edge == 0 else slice(-1, None)
            outside[np.unique(background[tuple(index)])] = True
    outside[0] = False  # label 0 is the mask itself
    return np.asarray(~outside[background])


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
        array: npt.NDArray[Any] = volume.array
        transposed = not array.flags.c_contiguous and array.flags.f_contiguous
        hu = array.T if transposed else array
        axial = next((i for i, c in enumerate(volume.orientation) if c in "SI"), 2)
        if transposed:
            axial = 2 - axial
        body = _fill_slices(_largest_component(hu > self.body_hu), axial)
        labels = body.astype(np.uint8)
        # The outermost body voxel is skin (or partial volume with the air outside): never lung.
        air, count = ndimage.label((hu < self.lung_hu) & ndimage.binary_erosion(body))
        if count:
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            sizes = np.bincount(air.ravel(), minlength=count + 1) * voxel_ml
            sizes[0] = 0.0
            labels[(sizes >= self.min_lung_ml)[air]] = 2
        labels[(hu >= self.bone_hu) & body] = 3
        return labels.T if transposed else labels

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
transposed view (no copy) and the result transposed back. Holes are filled a slab of
slices at a time: background components connected within a slice that do not touch the
slice's border.

Memory (issue #16): the peak beyond the int16 volume is about 1.5 times the volume's
bytes (a 512x512x800 CT: 400 MB volume, about 600 MB more). No float copy; connected
components are labelled into uint16 (int32 only past 65,535 components); while the air
is labelled the body mask is kept as packed bits, and the label map is then built in the
air mask's own buffer seen as uint8; every other step (hole filling, the thresholds
inside the body, counting) runs in slabs of a few MB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from autolabel.inference.spec import label_counts
from autolabel.records import Volume

#: Voxels per slab of the slab-wise steps (a few MB of temporaries each).
_SLAB_VOXELS = 1 << 22


def _label(mask: npt.NDArray[np.bool_], structure: Any = None) -> tuple[npt.NDArray[Any], int]:
    """``ndimage.label`` into uint16 (half of int32's memory), int32 past 65,535 parts."""
    try:
        parts, count = ndimage.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # scipy: "insufficient bit-depth in requested output type"
        parts, count = ndimage.label(mask, structure=structure, output=np.int32)
    return parts, int(count)


def _slabs(shape: tuple[int, ...], axis: int = 0) -> list[tuple[slice, ...]]:
    """Index tuples cutting an array of ``shape`` into slabs along ``axis``."""
    step = max(1, _SLAB_VOXELS // max(1, int(np.prod(shape)) // max(1, shape[axis])))
    cuts = []
    for start in range(0, shape[axis], step):
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, start + step)
        cuts.append(tuple(index))
    return cuts


def _largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 6-connected component of ``mask``, written into ``mask`` itself."""
    parts, count = _label(mask)
    if count <= 1:
        return mask
    sizes = label_counts(parts, count + 1)
    sizes[0] = 0
    np.equal(parts, int(sizes.argmax()), out=mask)
    return mask


def _fill_slab(mask: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
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


def _fill_slices(mask: npt.NDArray[np.bool_], axis: int) -> npt.NDArray[np.bool_]:
    """``mask`` with the holes of each slice along ``axis`` filled, in place, slab by slab
    (a slice's holes never depend on another slice)."""
    for cut in _slabs(mask.shape, axis):
        mask[cut] = _fill_slab(mask[cut], axis)
    return mask


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
        # The outermost body voxel is skin (or partial volume with the air outside): never lung.
        air_mask = ndimage.binary_erosion(body)
        cuts = _slabs(hu.shape)
        # While the air is labelled the body waits as bits (1/16 of the volume's bytes) ...
        packed = [np.packbits(body[cut]) for cut in cuts]
        del body
        for cut in cuts:
            air_mask[cut] &= hu[cut] < self.lung_hu
        air, count = _label(air_mask)
        # ... then comes back as the label map, in the air mask's buffer (1 = body).
        labels = air_mask.view(np.uint8)
        for cut, bits in zip(cuts, packed, strict=True):
            slab = labels[cut]
            slab[...] = np.unpackbits(bits, count=slab.size).reshape(slab.shape)
        del packed
        if count:
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            sizes = label_counts(air, count + 1) * voxel_ml
            sizes[0] = 0.0
            lung = sizes >= self.min_lung_ml
            for cut in cuts:
                labels[cut][lung[air[cut]]] = 2
        del air
        for cut in cuts:  # bone inside the body (lung is never bone)
            labels[cut][(hu[cut] >= self.bone_hu) & (labels[cut] != 0)] = 3
        return labels.T if transposed else labels

"""The voxel grid a label file must have for a DICOM series in RedBrick.

Decision
--------
A label map for a DICOM series is written on **exactly the grid of the NIfTI that
``dicom2nifti.dicom_series_to_nifti(folder, out)`` makes from that series, with its default
``reorient_nifti=True``**: same shape, same voxel order, same affine. :func:`redbrick_layout`
computes that grid from the series geometry without running dicom2nifti, and the DICOM
loader hands out every :class:`~autolabel.records.Volume` already on it, so a model's label
map needs no reordering before it is written.

Evidence
--------
* RedBrick documents nothing about label-file geometry (export-format.md §2.6); its server
  maps label voxels onto the image by array index.
* The official SDK (2.35.4, ``redbrick/export/public.py`` ``_download_task``) converts an
  exported DICOM series with ``dicom_series_to_nifti(series_dir, out)``, i.e. with
  ``reorient_nifti=True``, after ``disable_validate_slice_increment()`` and
  ``disable_validate_slicecount()``. It then compares that NIfTI with the exported label file
  (shape, data offset, best affine, qform, sform) and warns "Headers of converted nifti image
  and segmentation do not match" when they differ: RedBrick's own label files for a DICOM
  series are on this grid.
* dicom2nifti 2.6 builds (``convert_generic.dicom_to_nifti``, ``common.create_affine``) an
  array indexed [column, row, slice] with slices sorted by ImagePositionPatient, and the
  affine ``diag(-1, -1, 1) @ [row_cos*dc, col_cos*dr, step | ipp_first]`` (LPS to RAS). With
  ``reorient_nifti`` (``image_reorientation.reorient_image``) it then permutes and flips the
  axes so that axis 0 runs to the patient's Left, axis 1 to Anterior and axis 2 to Superior
  ("LAS"), choosing for each world axis the voxel axis most aligned with it (a greedy
  tie-break in ``image_volume.__calc_most_likely_direction__``), and rebuilds the affine
  from the permuted, negated columns. :func:`redbrick_layout` reproduces exactly those rules.
* ``tests/test_imaging_layout.py`` checks shape, voxel values and affine against dicom2nifti
  itself for shuffled axial, oblique, coronal and sagittal series.

For a plain axial series (ImageOrientationPatient ``1,0,0,0,1,0``) the result is the
[column, row, slice] array with the row axis reversed, orientation ``LAS``.

Known divergence: for enhanced multi-frame files dicom2nifti orders frames by
InStackPositionNumber but takes the affine from the first and last *stored* frame, which
mislocates frames stored in reverse order; we sort frames by position, so our grid is the
geometrically correct one. RedBrick's behaviour for multi-frame label files is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Flips LPS millimetres to RAS+ (and back).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Layout:
    """How to turn a native [column, row, slice] array into RedBrick's label grid.

    ``axes[n]`` is the native axis that becomes output axis ``n``; ``flips[n]`` says whether
    output axis ``n`` runs backwards through it; ``affine`` is the RAS+ affine of the output.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    affine: npt.NDArray[np.float64]

    def apply(self, native: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """A view of ``native`` (indexed [column, row, slice]) on the output grid.

        >>> import numpy as np
        >>> lay = redbrick_layout(np.diag([-1.0, -1.0, 2.0, 1.0]), (2, 3, 4))
        >>> lay.apply(np.arange(24).reshape(2, 3, 4))[0, :, 0].tolist()
        [8, 4, 0]
        """
        out = np.moveaxis(native, self.axes, (0, 1, 2))
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        return out[index]

    def shape(self, native_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The output shape for a native shape."""
        a, b, c = self.axes
        return (native_shape[a], native_shape[b], native_shape[c])


def native_affine(
    orientation: npt.ArrayLike,
    pixel_spacing: tuple[float, float],
    first_position: npt.ArrayLike,
    slice_step: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """RAS+ affine of a native [column, row, slice] DICOM array.

    ``orientation`` is ImageOrientationPatient (row cosines, then column cosines),
    ``pixel_spacing`` is PixelSpacing (between rows, between columns), ``first_position``
    the ImagePositionPatient of slice 0 and ``slice_step`` the LPS vector from one slice to
    the next.

    >>> native_affine([1, 0, 0, 0, 1, 0], (0.5, 0.7), [10, 20, 30], [0, 0, 2])[:3].tolist()
    [[-0.7, 0.0, 0.0, -10.0], [0.0, -0.5, 0.0, -20.0], [0.0, 0.0, 2.0, 30.0]]
    """
    iop = np.asarray(orientation, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * float(pixel_spacing[1])
    lps[:3, 1] = iop[3:] * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return np.asarray(LPS_TO_RAS @ lps, dtype=np.float64)


def _most_likely_axes(inverse: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """For world x, y, z: the voxel axis most aligned with it, each axis used once.

    Mirrors dicom2nifti's greedy rule: where two world axes pick the same voxel axis, the
    weaker one moves to its next best choice.
    """
    dots = [np.abs(inverse[:3, w]).tolist() for w in range(3)]
    picks = [int(np.argmax(d)) for d in dots]
    best = [max(d) for d in dots]
    for _ in range(10):
        if len(set(picks)) == 3:
            break
        for a, b in ((0, 1), (0, 2), (1, 2)):
            if picks[a] != picks[b]:
                continue
            loser = b if best[a] >= best[b] else a
            dots[loser][picks[loser]] = 0.0
            picks[loser] = int(np.argmax(dots[loser]))
            best[loser] = max(dots[loser])
    if len(set(picks)) != 3:
        raise ValueError("cannot match voxel axes to world axes (degenerate affine)")
    return (picks[0], picks[1], picks[2])


def redbrick_layout(affine: npt.ArrayLike, native_shape: tuple[int, int, int]) -> Layout:
    """The label grid RedBrick expects for a series with this native RAS+ ``affine``.

    Output axis 0 is the native axis closest to world x and runs to the patient's Left,
    axis 1 is closest to y and runs Anterior, axis 2 is closest to z and runs Superior:
    dicom2nifti's ``reorient_nifti=True`` (see the module docstring for the evidence).

    >>> import numpy as np
    >>> axial = native_affine([1, 0, 0, 0, 1, 0], (1.0, 1.0), [0, 0, 0], [0, 0, 1])
    >>> lay = redbrick_layout(axial, (4, 3, 2))
    >>> lay.axes, lay.flips
    ((0, 1, 2), (False, True, False))
    """
    native = np.asarray(affine, dtype=np.float64)
    inverse = np.asarray(np.linalg.inv(native), dtype=np.float64)
    axes = _most_likely_axes(inverse)
    # Sign of d(voxel index)/d(world) along each matched axis, as dicom2nifti reads it.
    runs_right = inverse[axes[0], 0] >= 0
    runs_posterior = inverse[axes[1], 1] < 0
    runs_inferior = inverse[axes[2], 2] < 0
    flips = (bool(runs_right), bool(runs_posterior), bool(runs_inferior))
    out = np.eye(4)
    corner = np.array([0.0, 0.0, 0.0, 1.0])
    for n, (axis, flip) in enumerate(zip(axes, flips, strict=True)):
        out[:, n] = -native[:, axis] if flip else native[:, axis]
        if flip:
            corner[axis] = native_shape[axis] - 1
    out[:, 3] = native @ corner
    return Layout(axes=axes, flips=flips, affine=out)

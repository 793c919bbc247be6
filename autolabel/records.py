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

from dataclasses import dataclass, field

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

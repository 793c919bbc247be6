"""What the image readers accept: size limits checked before decoding, and usable geometry.

Input can be hostile or broken: a 2 MB ``.nii.gz`` whose header claims 1024³ voxels would
decompress to gigabytes, a NaN or zero affine gives NaN spacings and volumes downstream.
Every reader checks the header's claims here *before* it allocates or decompresses, and the
geometry before it hands out a :class:`~autolabel.records.Volume`; each refusal is one
:class:`~autolabel.errors.ImageError` naming the file, what was found and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.errors import ImageError

#: Default voxel limit per series: 512 x 512 x 2048 (a long whole-body CT fits).
DEFAULT_MAX_VOXELS = 512 * 512 * 2048
#: Default limit on a series' decoded image data: 2 GiB.
DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class ImageLimits:
    """The most a reader may decode for one series (the header's claim is checked first).

    ``max_voxels`` bounds the voxel count, ``max_bytes`` the decoded (decompressed) image
    data. Command-line flags: ``--max-voxels`` and ``--max-image-mb``.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_voxels < 1 or self.max_bytes < 1:
            raise ValueError(
                f"image limits must be positive, got {self.max_voxels} voxels, "
                f"{self.max_bytes} bytes"
            )

    def check(self, shape: Sequence[int], itemsize: int, what: str) -> int:
        """Refuse a series whose ``shape`` is empty or over the limits; return its voxels."""
        dims = tuple(int(n) for n in shape)
        if not dims or min(dims) < 1:
            raise ImageError(
                f"{what}: the image has a zero-size dimension (shape {dims}); there is "
                "nothing to label. Re-export the series."
            )
        voxels = 1
        for n in dims:
            voxels *= n
        size = voxels * int(itemsize)
        if voxels > self.max_voxels or size > self.max_bytes:
            raise ImageError(
                f"{what}: the header claims shape {dims} ({voxels:,} voxels, "
                f"{size / 2**20:,.0f} MB decoded), over the limit of {self.max_voxels:,} "
                f"voxels and {self.max_bytes / 2**20:,.0f} MB; nothing was decoded. If the "
                "image is real, raise the limit with --max-voxels / --max-image-mb."
            )
        return voxels


def check_dtype(dtype: np.dtype[Any], what: str) -> None:
    """Refuse image data that is not plain grey-scale numbers (RGB, complex, records)."""
    if dtype.fields is not None or dtype.kind == "V":
        raise ImageError(
            f"{what}: the image is a colour (RGB/RGBA) NIfTI; only grey-scale images can be "
            "labelled. Convert it to one channel first."
        )
    if dtype.kind == "c":
        raise ImageError(
            f"{what}: the image holds complex numbers ({dtype}); autolabel will not drop the "
            "imaginary part silently. Save the magnitude (or the real part) as the image."
        )
    if dtype.kind not in "biuf":
        raise ImageError(f"{what}: unsupported voxel type {dtype}; expected integers or floats")


def check_affine(affine: npt.NDArray[np.float64], what: str) -> None:
    """Refuse an affine that is not finite or maps the voxel grid onto less than 3-D."""
    matrix = np.asarray(affine, dtype=np.float64)
    problem = ""
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        problem = "holds NaN or infinite values"
    else:
        norms = np.linalg.norm(matrix[:3, :3], axis=0)
        if np.any(norms == 0):
            problem = "has a zero voxel size (an all-zero column)"
        elif abs(float(np.linalg.det(matrix[:3, :3] / norms))) < 1e-6:
            problem = "is singular (two voxel axes point the same way)"
    if problem:
        raise ImageError(
            f"{what}: the image geometry is unusable: its affine {problem}. Fix the header's "
            "sform/qform (voxel size and orientation), e.g. re-export the image from the scanner "
            "software or set it with nibabel."
        )

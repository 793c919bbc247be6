"""Geometry checks for a stack of DICOM image planes (slices or frames), numpy only.

Every check names the item (file, or file and frame) at fault and says what to do, so a
task that fails here can be fixed by whoever uploaded it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from autolabel.errors import ImageError

#: Cosines may differ this much between slices of one series (DS rounding).
ORIENTATION_TOLERANCE = 1e-4
#: Relative tolerance on slice spacing and on the in-plane drift of positions.
SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class Plane:
    """One 2-D image of a series: where it is and how its stored values map to real ones."""

    item: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    thickness: float | None = None


@dataclass(frozen=True)
class Stack:
    """Planes sorted along the slice normal, with the geometry they share."""

    planes: tuple[Plane, ...]
    orientation: npt.NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    first_position: npt.NDArray[np.float64]
    step: npt.NDArray[np.float64]


def _require_geometry(plane: Plane, source: str) -> None:
    missing = [
        name
        for name, value in (
            ("ImagePositionPatient", plane.position),
            ("ImageOrientationPatient", plane.orientation),
            ("PixelSpacing", plane.pixel_spacing),
        )
        if value is None
    ]
    if missing:
        raise ImageError(
            f"{source}: {plane.item} has no usable {', '.join(missing)}; it cannot be placed "
            "in a volume (a localizer, secondary capture or stripped file?). Remove it from "
            "the series or re-export the series with its geometry."
        )


def _check_consistent(planes: Sequence[Plane], source: str) -> None:
    first = planes[0]
    iop0 = np.asarray(first.orientation)
    for plane in planes[1:]:
        if (plane.rows, plane.columns) != (first.rows, first.columns):
            raise ImageError(
                f"{source}: mixed image sizes: {first.item} is {first.rows}x{first.columns} "
                f"but {plane.item} is {plane.rows}x{plane.columns}. A series must be one "
                "stack of equal-size slices; split it or remove the odd files."
            )
        if np.max(np.abs(np.asarray(plane.orientation) - iop0)) > ORIENTATION_TOLERANCE:
            raise ImageError(
                f"{source}: mixed orientation: {plane.item} has ImageOrientationPatient "
                f"{list(plane.orientation or ())} but {first.item} has {iop0.tolist()}. "
                "A series must be one stack; remove localizers or split the series."
            )
        spacing = np.asarray(plane.pixel_spacing, dtype=np.float64)
        if not np.allclose(spacing, np.asarray(first.pixel_spacing), rtol=1e-4, atol=1e-6):
            raise ImageError(
                f"{source}: mixed PixelSpacing: {plane.item} has {plane.pixel_spacing} but "
                f"{first.item} has {first.pixel_spacing}; split the series."
            )


def _check_orientation(orientation: npt.NDArray[np.float64], item: str, source: str) -> None:
    row, column = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(column) - 1) > 1e-3
        or abs(float(row @ column)) > 1e-3
    ):
        raise ImageError(
            f"{source}: {item} has an invalid ImageOrientationPatient {orientation.tolist()} "
            "(the row and column cosines must be orthogonal unit vectors)."
        )


def _spacing_error(
    source: str, planes: Sequence[Plane], along: npt.NDArray[np.float64]
) -> ImageError:
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    gap = float(gaps[worst])
    between = f"between {planes[worst].item} and {planes[worst + 1].item}"
    ratio = gap / typical
    if abs(ratio - round(ratio)) < SPACING_TOLERANCE * 5 and round(ratio) >= 2:
        missing = round(ratio) - 1
        return ImageError(
            f"{source}: {missing} slice(s) missing {between}: the gap is {gap:.4g} mm where "
            f"the series' spacing is {typical:.4g} mm. Upload the complete series."
        )
    return ImageError(
        f"{source}: uneven slice spacing: {gap:.4g} mm {between} where the series' spacing "
        f"is {typical:.4g} mm. Only evenly spaced series can be labelled on one grid; "
        "resample the series or split it into evenly spaced parts."
    )


def sort_planes(planes: Sequence[Plane], source: str) -> Stack:
    """Sort ``planes`` along the slice normal and check that they form one regular volume.

    Raises :class:`ImageError` for missing geometry, mixed sizes / orientation / spacing,
    two planes at one position, missing slices, uneven spacing and gantry tilt (positions
    that drift in-plane). One plane is a volume one slice thick (SliceThickness, or 1 mm).
    """
    if not planes:
        raise ImageError(f"{source}: the series has no image slices")
    for plane in planes:
        _require_geometry(plane, source)
    _check_consistent(planes, source)
    orientation = np.asarray(planes[0].orientation, dtype=np.float64)
    _check_orientation(orientation, planes[0].item, source)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray([p.position for p in planes], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = tuple(planes[int(i)] for i in order)
    positions, along = positions[order], along[order]
    spacing = (float(ordered[0].pixel_spacing[0]), float(ordered[0].pixel_spacing[1]))  # type: ignore[index]
    if len(ordered) == 1:
        step = normal * float(ordered[0].thickness or 1.0)
        return Stack(ordered, orientation, spacing, positions[0], step)
    gaps = np.diff(along)
    if float(gaps.min()) <= 1e-3:
        k = int(np.argmin(gaps))
        raise ImageError(
            f"{source}: {ordered[k].item} and {ordered[k + 1].item} lie at the same position "
            f"{positions[k].tolist()}: duplicate slices or several stacks in one series. "
            "Remove the duplicates or split the series."
        )
    typical = float(np.median(gaps))
    if float(np.max(np.abs(gaps - typical))) > SPACING_TOLERANCE * typical + 1e-3:
        raise _spacing_error(source, ordered, along)
    offsets = positions - positions[0]
    drift = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    worst = int(np.argmax(drift))
    if float(drift[worst]) > SPACING_TOLERANCE * max(float(along[worst] - along[0]), 1.0) + 1e-3:
        angle = float(np.degrees(np.arctan2(drift[worst], along[worst] - along[0])))
        raise ImageError(
            f"{source}: slice positions are not along the slice normal (gantry tilt or a "
            f"sheared stack, {angle:.2f} degrees at {ordered[worst].item}). Tilted series "
            "cannot be labelled on a regular grid; resample (de-tilt) it before uploading."
        )
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    return Stack(ordered, orientation, spacing, positions[0], step)

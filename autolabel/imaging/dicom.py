"""Load one DICOM series (a task's items) into a :class:`~autolabel.records.Volume`.

Two passes (perf-limits.md §2): headers only (``dicom_headers``), then the pixel bytes of
each slice copied from its file offset into a volume allocated once, already on RedBrick's
label grid (``layout``). Compressed slices and enhanced multi-frame files go through
pydicom's decoders instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from autolabel.errors import ImageError
from autolabel.imaging.checks import ImageLimits, check_affine
from autolabel.imaging.dicom_headers import SliceHeader, read_headers
from autolabel.imaging.layout import Layout, native_affine, redbrick_layout
from autolabel.imaging.planes import Plane, Stack, sort_planes
from autolabel.records import Volume

# SOP class families that carry no image to label (SEG, RT, SR, presentation states, ...).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.481",
    "1.2.840.10008.5.1.4.1.1.88",
    "1.2.840.10008.5.1.4.1.1.11",
    "1.2.840.10008.5.1.4.1.1.104",
)
_CODECS_HINT = (
    "install the DICOM decoders with `pip install 'autolabel[dicom-codecs]'` "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, python-gdcm)"
)


def _sop_name(uid: str) -> str:
    return UID(uid).name if uid else "unknown SOP class"


def _check_images(headers: Sequence[SliceHeader], source: str) -> None:
    """Every file is a grey-scale image of one series with one pixel format."""
    for h in headers:
        if not h.has_pixels or h.sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
            raise ImageError(
                f"{source}: {h.path} is not an image ({_sop_name(h.sop_class)}"
                f"{'' if h.has_pixels else ', no pixel data'}); remove it from the series' "
                "items (segmentations and RT objects are not series to label)."
            )
        if h.samples != 1:
            raise ImageError(
                f"{source}: {h.path} is a colour image (SamplesPerPixel={h.samples}); "
                "only grey-scale series can be labelled."
            )
        if h.bits_allocated not in (8, 16, 32):
            raise ImageError(f"{source}: {h.path} has BitsAllocated={h.bits_allocated}")
    series = sorted({h.series_uid for h in headers})
    if len(series) > 1:
        raise ImageError(
            f"{source}: the items span {len(series)} series ({', '.join(series)}); a RedBrick "
            "series must hold one SeriesInstanceUID. Split them into separate series."
        )
    first = headers[0]
    for h in headers[1:]:
        if (h.bits_allocated, h.bits_stored, h.signed) != (
            first.bits_allocated,
            first.bits_stored,
            first.signed,
        ):
            raise ImageError(
                f"{source}: mixed pixel formats ({first.path}: {first.bits_allocated} bits "
                f"{'signed' if first.signed else 'unsigned'}, {h.path}: {h.bits_allocated} "
                f"bits {'signed' if h.signed else 'unsigned'}); split the series."
            )
    if len(headers) > 1 and any(h.frames > 1 for h in headers):
        raise ImageError(
            f"{source}: the series has {len(headers)} files and some are multi-frame; "
            "a multi-frame series must be a single file."
        )


def _stored_dtype(h: SliceHeader) -> np.dtype[Any]:
    kind = "i" if h.signed else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def _decode(path: str, transfer_syntax: str, source: str) -> tuple[Dataset, npt.NDArray[Any]]:
    """Read a whole file and decode its pixels, translating decoder failures."""
    try:
        ds = dcmread(path)
        return ds, np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        syntax = UID(transfer_syntax)
        hint = _CODECS_HINT if syntax.is_compressed else "the file may be corrupt"
        raise ImageError(
            f"{source}: cannot decode the pixel data of {path} ({syntax.name}): {exc}. "
            f"To fix: {hint}."
        ) from exc
    except OSError as exc:
        raise ImageError(f"{source}: cannot read {path} ({exc})") from exc


def _read_raw(h: SliceHeader, offset: int, scratch: npt.NDArray[Any], source: str) -> None:
    """Copy the raw pixel bytes of ``h`` at ``offset`` into ``scratch`` (rows x columns)."""
    try:
        with open(h.path, "rb") as fp:
            fp.seek(offset)
            got = fp.readinto(scratch.data.cast("B"))
    except OSError as exc:
        raise ImageError(f"{source}: cannot read {h.path} ({exc})") from exc
    if got != scratch.nbytes:
        raise ImageError(f"{source}: {h.path} is truncated (pixel data ends early)")


def _allocate(
    layout: Layout, native_shape: tuple[int, int, int], dtype: np.dtype[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """An F-ordered array on the output grid and a [column, row, slice] view into it."""
    out = np.empty(layout.shape(native_shape)[::-1], dtype=dtype).T
    flip = tuple(slice(None, None, -1) if f else slice(None) for f in layout.flips)
    native = np.moveaxis(out[flip], (0, 1, 2), layout.axes)
    return out, native


def _correct_unused_bits(array: npt.NDArray[Any], h: SliceHeader) -> None:
    """Ignore the bits above BitsStored (sign-extend signed values), as pydicom does."""
    shift = h.bits_allocated - h.bits_stored
    if 0 < shift < h.bits_allocated:
        np.left_shift(array, shift, out=array)
        np.right_shift(array, shift, out=array)


def _add_intercept(array: npt.NDArray[Any], intercept: int) -> npt.NDArray[Any]:
    """``array + intercept`` in the smallest of (stored type, int16, int32) that holds it."""
    if intercept == 0:
        return array
    lo, hi = int(array.min()), int(array.max())
    candidates = [array.dtype, np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)]
    target = next(
        d
        for d in candidates
        if np.iinfo(d).min <= lo + intercept and hi + intercept <= np.iinfo(d).max
    )
    if target.itemsize == array.dtype.itemsize and np.iinfo(target).min <= lo:
        result = array.view(target) if hi <= np.iinfo(target).max else array.astype(target)
    else:
        result = array.astype(target)
    np.add(result, np.asarray(intercept, dtype=target), out=result)
    return result


def _rescale(
    out: npt.NDArray[Any], layout: Layout, native_shape: tuple[int, int, int], planes: Stack
) -> npt.NDArray[Any]:
    """Apply RescaleSlope/Intercept: integers stay integers, anything else becomes float32."""
    slopes = np.array([p.slope for p in planes.planes], dtype=np.float64)
    intercepts = np.array([p.intercept for p in planes.planes], dtype=np.float64)
    same = bool(np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]))
    if same and slopes[0] == 1.0 and float(intercepts[0]).is_integer():
        return _add_intercept(out, int(intercepts[0]))
    result, native_result = _allocate(layout, native_shape, np.dtype(np.float32))
    flip = tuple(slice(None, None, -1) if f else slice(None) for f in layout.flips)
    native_in = np.moveaxis(out[flip], (0, 1, 2), layout.axes)
    np.multiply(native_in, slopes.astype(np.float32), out=native_result)
    native_result += intercepts.astype(np.float32)
    return result


def _frame_planes(ds: Dataset, path: str) -> list[Plane]:
    """One :class:`Plane` per frame of an enhanced multi-frame file (functional groups)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if shared_seq else Dataset()

    def group(frame: Dataset, sequence: str, keyword: str) -> Any:
        for holder in (frame, shared):
            items = holder.get(sequence)
            if items and keyword in items[0]:
                return items[0].get(keyword)
        return ds.get(keyword)

    def floats(value: Any, count: int) -> Any:
        try:
            numbers = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None
        return numbers if len(numbers) == count else None

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    planes = []
    for index in range(frames):
        frame = per_frame[index] if index < len(per_frame) else Dataset()
        slope = group(frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = group(frame, "PixelValueTransformationSequence", "RescaleIntercept")
        thickness = group(frame, "PixelMeasuresSequence", "SliceThickness")
        planes.append(
            Plane(
                item=f"{path} (frame {index + 1})",
                position=floats(group(frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=floats(
                    group(frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=floats(group(frame, "PixelMeasuresSequence", "PixelSpacing"), 2),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                thickness=float(thickness) if thickness not in (None, "") else None,
            )
        )
    return planes


def _plane(h: SliceHeader) -> Plane:
    return Plane(
        item=h.path,
        position=h.position,
        orientation=h.orientation,
        pixel_spacing=h.pixel_spacing,
        rows=h.rows,
        columns=h.columns,
        slope=h.slope,
        intercept=h.intercept,
        thickness=h.slice_thickness,
    )


def _volume(
    stack: Stack,
    fill: Callable[[int, npt.NDArray[Any]], None],
    first: SliceHeader,
    source: str,
) -> Volume:
    """Allocate on the RedBrick grid, let ``fill(k, target)`` write slice ``k``, rescale."""
    n = len(stack.planes)
    native_shape = (first.columns, first.rows, n)
    affine = native_affine(stack.orientation, stack.pixel_spacing, stack.first_position, stack.step)
    check_affine(affine, source)
    layout = redbrick_layout(affine, native_shape)
    out, native = _allocate(layout, native_shape, _stored_dtype(first))
    for k in range(n):
        fill(k, native[:, :, k])
    _correct_unused_bits(out, first)
    array = _rescale(out, layout, native_shape, stack)
    slice_axis = layout.axes.index(2)
    items = [p.item.split(" (frame ")[0] for p in stack.planes]
    if layout.flips[slice_axis]:
        items.reverse()
    return Volume(
        array=array,
        affine=layout.affine,
        modality=first.modality,
        source=source,
        slice_items=tuple(items),
        slice_axis=slice_axis,
    )


def _load_multiframe(h: SliceHeader, source: str, limits: ImageLimits) -> Volume:
    limits.check((h.columns, h.rows, h.frames), h.bits_allocated // 8, source)
    ds, pixels = _decode(h.path, h.transfer_syntax, source)
    stack = sort_planes(_frame_planes(ds, h.path), source)
    frame_of = {p.item: i for i, p in enumerate(_frame_planes(ds, h.path))}
    order = [frame_of[p.item] for p in stack.planes]

    def fill(k: int, target: npt.NDArray[Any]) -> None:
        target[...] = pixels[order[k]].T

    return _volume(stack, fill, h, source)


def load_dicom_series(
    paths: Sequence[str | Path],
    *,
    source: str = "",
    header_workers: int | None = None,
    limits: ImageLimits | None = None,
) -> Volume:
    """Read the DICOM files of one series, in any order, into a volume on RedBrick's grid.

    Contract:

    * ``paths`` are one series' items (all files of one SeriesInstanceUID), in any order,
      or a single enhanced multi-frame file. ``source`` names the task and series in error
      messages (default: the folder of the first file).
    * Slices are sorted by position along the slice normal (not InstanceNumber); the slice
      step comes from the positions. RescaleSlope/Intercept are applied: integer results
      stay integer (int16 for CT), anything else becomes float32.
    * The returned ``Volume.array`` is F-ordered on the grid of :func:`redbrick_layout`
      (the NIfTI dicom2nifti writes; see ``autolabel.imaging.layout``) and
      ``Volume.affine`` is its RAS+ affine; ``slice_items`` lists the file of each slice
      along ``Volume.slice_axis``.
    * Raises :class:`ImageError` naming the file and the fix for: non-DICOM or non-image
      files (SEG, RT, SR), several series, missing slices, uneven spacing, gantry tilt,
      mixed orientation, size or pixel format, and compressed pixel data whose decoder is
      missing (install the ``dicom-codecs`` extra).
    * ``header_workers``: see :func:`autolabel.imaging.dicom_headers.read_headers`.
    * ``limits`` (default :class:`ImageLimits`) bound rows x columns x slices before any
      pixel is read; an unusable geometry (zero or non-finite orientation) is refused.
    """
    if isinstance(paths, str | os.PathLike):
        raise TypeError("load_dicom_series takes a list of files; use load_volume for a folder")
    names = [os.fspath(p) for p in paths]
    label = source or (str(Path(names[0]).parent) if names else "DICOM series")
    if not names:
        raise ImageError(f"{label}: no DICOM files given")
    headers = read_headers(names, workers=header_workers)
    _check_images(headers, label)
    limits = limits or ImageLimits()
    if headers[0].frames > 1:
        return _load_multiframe(headers[0], label, limits)
    limits.check((headers[0].columns, headers[0].rows, len(headers)), 4, label)
    stack = sort_planes([_plane(h) for h in headers], label)
    by_path = {h.path: h for h in headers}
    ordered = [by_path[p.item] for p in stack.planes]
    first = ordered[0]
    scratch = np.empty((first.rows, first.columns), dtype=_stored_dtype(first))

    def fill(k: int, target: npt.NDArray[Any]) -> None:
        h = ordered[k]
        if h.pixel_offset is not None:
            _read_raw(h, h.pixel_offset, scratch, label)
            target[...] = scratch.T
            return
        _, pixels = _decode(h.path, h.transfer_syntax, label)
        if pixels.shape != (h.rows, h.columns):
            raise ImageError(
                f"{label}: {h.path} decodes to {pixels.shape}, not {h.rows}x{h.columns}"
            )
        target[...] = pixels.T

    return _volume(stack, fill, first, label)

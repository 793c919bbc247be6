"""The header pass over a DICOM series: small, picklable facts about each file.

Parsing headers is the cost of reading a series (perf-limits.md §2), so this pass reads up
to the pixel data only and records where the pixel bytes start; the pixel pass then copies
them straight into a preallocated volume. A small process pool spreads the parsing over
the cores for long series.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from autolabel.errors import ImageError

_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_UNCOMPRESSED_LE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}
#: Below this many files the pool's start-up and transfer cost more than it saves.
POOL_MIN_FILES = 96
#: On two cores the pool gained nothing while inference or other work held the CPUs
#: (bench/bench_imaging.py: 1.02x over serial headers; perf-limits.md saw 1.5x on an idle
#: machine), so by default it is used only where cores are to spare.
POOL_MIN_CPUS = 4


@dataclass(frozen=True)
class SliceHeader:
    """What the loader needs from one DICOM file (plain values, cheap to pickle).

    ``pixel_offset`` is the file offset of the raw pixel bytes when they can be copied as
    they are (uncompressed little endian, exact length), else ``None``.
    """

    path: str
    series_uid: str
    sop_class: str
    modality: str
    transfer_syntax: str
    has_pixels: bool
    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    slope: float
    intercept: float
    pixel_offset: int | None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _pixel_probe(fp: Any, ds: Dataset, expected: int) -> tuple[bool, int | None]:
    """Whether PixelData follows, and the offset of its raw bytes when they can be copied.

    pydicom leaves ``fp`` at the PixelData tag after ``stop_before_pixels``.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    head = fp.read(12)
    if head[:4] not in (_PIXEL_TAG, _PIXEL_TAG_BE):
        return False, None
    if syntax not in _UNCOMPRESSED_LE:
        return True, None
    start = fp.tell() - len(head)
    if syntax == str(ExplicitVRLittleEndian):
        if head[4:6] not in (b"OW", b"OB"):
            return True, None
        length, value_at = struct.unpack("<I", head[8:12])[0], start + 12
    else:
        length, value_at = struct.unpack("<I", head[4:8])[0], start + 8
    # An odd pixel data length is padded to even, so allow one extra byte.
    if length not in (expected, expected + 1):
        return True, None
    return True, int(value_at)


def read_header(path: str) -> SliceHeader:
    """Parse one file up to its pixel data.

    Raises :class:`ImageError` when the file is not DICOM at all.
    """
    try:
        with open(path, "rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            bits = int(ds.get("BitsAllocated", 0) or 0)
            expected = rows * columns * frames * samples * bits // 8
            deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == str(
                DeflatedExplicitVRLittleEndian
            )
            if deflated:
                fp.seek(0)
                has_pixels, offset = "PixelData" in dcmread(fp), None
            else:
                has_pixels, offset = _pixel_probe(fp, ds, expected)
    except InvalidDicomError as exc:
        raise ImageError(f"{path}: not a DICOM file ({exc}); remove it from the series") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc})") from exc
    return SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_class=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        has_pixels=has_pixels,
        frames=frames,
        rows=rows,
        columns=columns,
        samples=samples,
        bits_allocated=bits,
        bits_stored=int(ds.get("BitsStored", bits) or bits),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=_optional_float(ds.get("SliceThickness")),
        slope=_optional_float(ds.get("RescaleSlope")) or 1.0,
        intercept=_optional_float(ds.get("RescaleIntercept")) or 0.0,
        pixel_offset=offset,
    )


def _optional_float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _read_chunk(paths: Sequence[str]) -> list[SliceHeader | ImageError]:
    out: list[SliceHeader | ImageError] = []
    for path in paths:
        try:
            out.append(read_header(path))
        except ImageError as exc:
            out.append(exc)
    return out


_POOL: ProcessPoolExecutor | None = None


def _pool() -> ProcessPoolExecutor:
    """A lazily started, reused pool of two workers (forkserver: safe with threads)."""
    global _POOL
    if _POOL is None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        _POOL = ProcessPoolExecutor(max_workers=2, mp_context=context)
    return _POOL


def read_headers(paths: Sequence[str | Path], *, workers: int | None = None) -> list[SliceHeader]:
    """Headers of ``paths`` in the same order.

    ``workers=None`` picks a pool of two processes for series of at least
    :data:`POOL_MIN_FILES` files on a machine with at least :data:`POOL_MIN_CPUS` cores,
    else reads serially; ``workers=1`` forces serial reading, ``workers=2`` the pool. The
    first error found is raised.
    """
    names = [os.fspath(p) for p in paths]
    use_pool = (
        workers != 1 and len(names) >= POOL_MIN_FILES and (os.cpu_count() or 1) >= POOL_MIN_CPUS
    )
    if workers is not None and workers > 1:
        use_pool = True
    if use_pool:
        chunk = max(1, -(-len(names) // 4))
        chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
        results = [h for part in _pool().map(_read_chunk, chunks) for h in part]
    else:
        results = _read_chunk(names)
    headers: list[SliceHeader] = []
    for item in results:
        if isinstance(item, ImageError):
            raise item
        headers.append(item)
    return headers

"""A generated corpus of bad inputs, and good ones beside them, for the adversarial tests.

:func:`build_corpus` writes every entry of :data:`BAD` and :data:`GOOD` under a folder:
a NIfTI file (``<name>.nii.gz``) or a DICOM folder (``<name>/``), so that
``autolabel emulator seed --from FOLDER`` makes one task per entry, named after it. Each
bad entry carries ``expect``, a fragment the one clear error for it must contain.

The NIfTI files are written byte by byte from a nibabel header (nibabel refuses to *make*
most of these images, which is the point), so each entry is exactly the broken file a
careless exporter or an attacker could hand over.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from autolabel.emulator.phantom import make_phantom
from autolabel.imaging import write_dicom_series


@dataclass(frozen=True)
class Entry:
    """One input: ``build(folder)`` writes it and returns its path."""

    name: str
    build: Callable[[Path], Path]
    expect: str = ""


def _ct(shape: tuple[int, int, int] = (24, 24, 12)) -> np.ndarray[Any, Any]:
    return np.asarray(make_phantom(shape, seed=7).hu, dtype=np.int16)


def nifti_bytes(
    array: np.ndarray[Any, Any] | None,
    *,
    affine: np.ndarray[Any, Any] | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
    raw_data: bytes | None = None,
) -> bytes:
    """A single-file NIfTI-1 with exactly this header geometry (sform only) and data."""
    header = nib.Nifti1Header()
    data = np.asarray(array) if array is not None else None
    header.set_data_shape(shape if shape is not None else data.shape)  # type: ignore[union-attr]
    header.set_data_dtype(dtype if dtype is not None else data.dtype)  # type: ignore[union-attr]
    matrix = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header["sform_code"] = 1
    header["qform_code"] = 0
    header["srow_x"], header["srow_y"], header["srow_z"] = matrix[0], matrix[1], matrix[2]
    header["pixdim"][1:4] = 1.0
    header.set_data_offset(352)
    out = io.BytesIO()
    header.write_to(out)
    out.write(b"\0" * (352 - out.tell()))
    if raw_data is not None:
        out.write(raw_data)
    elif data is not None:
        out.write(np.asfortranarray(data).T.tobytes())
    return out.getvalue()


def _nifti(name: str, payload: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / f"{name}.nii.gz"
        path.write_bytes(gzip.compress(payload(), compresslevel=1))
        return path

    return build


def _raw(name: str, payload: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / f"{name}.nii.gz"
        path.write_bytes(payload())
        return path

    return build


def _affine(**cells: float) -> np.ndarray[Any, Any]:
    matrix = np.eye(4)
    for cell, value in cells.items():
        matrix[int(cell[1]), int(cell[2])] = value
    return matrix


def _truncated() -> bytes:
    whole = gzip.compress(nifti_bytes(_ct()), compresslevel=1)
    return whole[: len(whole) // 2]


def _liar() -> bytes:
    # The header claims 1024^3 int16 (2 GiB); the stream holds 64 MB of zeros (~64 KB gz).
    return nifti_bytes(None, shape=(1024, 1024, 1024), dtype=np.int16, raw_data=b"\0" * (64 << 20))


def _rgb() -> bytes:
    rgb = np.zeros((16, 16, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return nifti_bytes(rgb)


def _dicom_series(folder: Path, name: str) -> list[Path]:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    return write_dicom_series(_ct(), affine, folder / name, patient_id=name)


def _dicom_no_pixels(folder: Path) -> Path:
    files = _dicom_series(folder, "bad-dicom-no-pixels")
    ds = pydicom.dcmread(files[3])
    del ds.PixelData
    ds.save_as(files[3], enforce_file_format=True)
    return files[0].parent


def _dicom_mixed_size(folder: Path) -> Path:
    files = _dicom_series(folder, "bad-dicom-mixed-size")
    small = np.asarray(make_phantom((20, 20, 12), seed=7).hu, dtype=np.int16)
    other = write_dicom_series(small, np.diag([1.0, 1.0, 2.0, 1.0]), folder / "tmp-small")
    # Same series, one slice of another size: what a careless merge of two exports gives.
    ds = pydicom.dcmread(other[5])
    keep = pydicom.dcmread(files[5])
    ds.SeriesInstanceUID = keep.SeriesInstanceUID
    ds.StudyInstanceUID = keep.StudyInstanceUID
    ds.FrameOfReferenceUID = keep.FrameOfReferenceUID
    ds.ImagePositionPatient = keep.ImagePositionPatient
    ds.SOPInstanceUID = keep.SOPInstanceUID
    ds.save_as(files[5], enforce_file_format=True)
    for path in other:
        path.unlink()
    (folder / "tmp-small").rmdir()
    return files[0].parent


def _good_dicom(folder: Path) -> Path:
    return _dicom_series(folder, "good-dicom")[0].parent


BAD: tuple[Entry, ...] = (
    Entry(
        "bad-nan-affine",
        _nifti("bad-nan-affine", lambda: nifti_bytes(_ct(), affine=_affine(a00=float("nan")))),
        "NaN or infinite",
    ),
    Entry(
        "bad-inf-affine",
        _nifti("bad-inf-affine", lambda: nifti_bytes(_ct(), affine=_affine(a11=float("inf")))),
        "NaN or infinite",
    ),
    Entry(
        "bad-zero-affine",
        _nifti("bad-zero-affine", lambda: nifti_bytes(_ct(), affine=np.zeros((4, 4)))),
        "zero voxel size",
    ),
    Entry(
        "bad-singular-affine",
        _nifti("bad-singular-affine", lambda: nifti_bytes(_ct(), affine=_affine(a01=1.0, a11=0.0))),
        "singular",
    ),
    Entry("bad-truncated", _raw("bad-truncated", _truncated), "truncated"),
    Entry("bad-lying-header", _nifti("bad-lying-header", _liar), "over the limit"),
    Entry(
        "bad-zero-dim",
        _nifti("bad-zero-dim", lambda: nifti_bytes(np.zeros((16, 0, 8), np.int16))),
        "zero-size dimension",
    ),
    Entry("bad-rgb", _nifti("bad-rgb", _rgb), "colour"),
    Entry(
        "bad-complex",
        _nifti("bad-complex", lambda: nifti_bytes((_ct() + 1j).astype(np.complex64))),
        "complex",
    ),
    Entry(
        "bad-4d",
        _nifti("bad-4d", lambda: nifti_bytes(np.stack([_ct(), _ct()], -1))),
        "one 3-D volume",
    ),
    Entry("bad-empty", _raw("bad-empty", lambda: b""), "not a NIfTI file"),
    Entry("bad-junk", _raw("bad-junk", lambda: np.random.default_rng(3).bytes(5000)), "not a"),
    Entry(
        "bad-junk-gzip",
        _nifti("bad-junk-gzip", lambda: np.random.default_rng(4).bytes(5000)),
        "not a",
    ),
    Entry("bad-dicom-no-pixels", _dicom_no_pixels, "no pixel data"),
    Entry("bad-dicom-mixed-size", _dicom_mixed_size, "size"),
)

GOOD: tuple[Entry, ...] = (
    Entry(
        "good-nifti",
        _nifti("good-nifti", lambda: nifti_bytes(_ct(), affine=np.diag([-1.0, -1.0, 2.0, 1.0]))),
    ),
    Entry("good-dicom", _good_dicom),
)


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every entry of :data:`BAD` and :data:`GOOD` into ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    return {entry.name: entry.build(folder) for entry in (*BAD, *GOOD)}

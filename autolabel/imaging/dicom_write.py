"""Write a voxel array as a DICOM series: one uncompressed CT or MR Image Storage file per slice.

The emulator seeds its sample studies with this, and tests and benchmarks build known-answer
series with it (oblique, tilted, shuffled ...). The files carry the modules a standard
reader needs (Patient, General Study/Series, Frame of Reference, Equipment, Image Plane,
Image Pixel, CT/MR Image, SOP Common), so pydicom and dicom2nifti read them as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
# CT scanners store unsigned-looking values with a -1024 intercept; mirror that so readers
# must apply the rescale to get HU back.
_CT_INTERCEPT = -1024


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that round-trips ``value`` closely."""
    for digits in range(10, 2, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as a DICOM decimal string")


def _plane_geometry(
    affine_lps: npt.NDArray[np.float64],
) -> tuple[list[float], tuple[float, float], float]:
    """ImageOrientationPatient, PixelSpacing (row, column) and slice spacing of an affine."""
    col_i, col_j, col_k = affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2]
    spacing_i, spacing_j, spacing_k = (float(np.linalg.norm(c)) for c in (col_i, col_j, col_k))
    if min(spacing_i, spacing_j, spacing_k) <= 0:
        raise ValueError(f"affine_lps has a zero-length axis: {affine_lps[:3, :3].tolist()}")
    row_cosine, column_cosine = col_i / spacing_i, col_j / spacing_j
    if abs(float(row_cosine @ column_cosine)) > 1e-4:
        raise ValueError("affine_lps columns 0 and 1 must be orthogonal (DICOM in-plane axes)")
    orientation = [float(v) for v in (*row_cosine, *column_cosine)]
    # PixelSpacing is (distance between rows, distance between columns) = (j, i).
    return orientation, (spacing_j, spacing_i), spacing_k


def _content_uid(kind: str, *parts: str) -> str:
    """A deterministic UID derived from the series content, so re-seeding is reproducible."""
    return str(generate_uid(entropy_srcs=[kind, *parts]))


def _base_dataset(
    modality: str,
    patient_id: str,
    series_description: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    shape: tuple[int, int],
) -> Dataset:
    """The attributes every slice of the series shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = _SOP_CLASSES[modality]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "autolabel"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape[1], shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if modality == "CT":
        ds.KVP = ""
        ds.RescaleType = "HU"
    else:
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = ""
        ds.RepetitionTime = ""
        ds.EchoTrainLength = ""
    return ds


def write_dicom_series(
    hu: npt.NDArray[np.int16],
    affine_lps: npt.ArrayLike,
    folder: str | Path,
    *,
    modality: str = "CT",
    patient_id: str = "ANON",
    series_description: str = "",
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``hu`` as one uncompressed DICOM file per slice into ``folder``; return the paths.

    Contract:

    * ``hu`` is a 3-D int16 array indexed ``[i, j, k]``: ``i`` along a row (DICOM column
      index), ``j`` down a column (row index), ``k`` over slices. For ``modality="CT"`` the
      values are Hounsfield units, stored with RescaleIntercept -1024 (slope 1) when they
      fit, else with intercept 0; MR values are stored as they are (slope 1, intercept 0).
    * ``affine_lps`` (4x4) maps ``(i, j, k, 1)`` to DICOM patient LPS millimetres. Columns 0
      and 1 give ImageOrientationPatient and PixelSpacing (they must be orthogonal; any
      oblique direction is fine); slice ``k`` is at ImagePositionPatient ``t + k * column2``.
      A column 2 that is not along the slice normal writes a gantry-tilted series.
    * Files are named ``slice_00001.dcm`` ... in ``k`` order (InstanceNumber ``k + 1``).
      UIDs not given are derived from the content, so the same input gives the same files.
    * ``folder`` is created if needed; existing files of the same names are overwritten.
    """
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASSES)}, got {modality!r}")
    array = np.asarray(hu)
    if array.ndim != 3 or array.dtype != np.int16:
        raise ValueError(f"hu must be a 3-D int16 array, got {array.dtype} {array.shape}")
    affine = np.asarray(affine_lps, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine_lps must be 4x4, got {affine.shape}")
    orientation, pixel_spacing, slice_spacing = _plane_geometry(affine)

    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(affine.tobytes())
    content = f"{patient_id}|{series_description}|{modality}|{digest.hexdigest()}"
    study_uid = study_uid or _content_uid("study", content)
    series_uid = series_uid or _content_uid("series", content, study_uid)
    frame_uid = _content_uid("frame", study_uid)

    intercept = 0
    if modality == "CT" and int(array.max(initial=0)) <= np.iinfo(np.int16).max + _CT_INTERCEPT:
        intercept = _CT_INTERCEPT
    base = _base_dataset(
        modality,
        patient_id,
        series_description,
        study_uid,
        series_uid,
        frame_uid,
        (array.shape[0], array.shape[1]),
    )
    base.ImageOrientationPatient = [_ds(v) for v in orientation]
    base.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    base.SliceThickness = _ds(slice_spacing)
    base.RescaleIntercept = intercept
    base.RescaleSlope = 1

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    normal = np.cross(orientation[:3], orientation[3:])
    paths: list[Path] = []
    for k in range(array.shape[2]):
        position = affine[:3, 3] + k * affine[:3, 2]
        sop_uid = _content_uid("sop", series_uid, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASSES[modality]
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.update(base)
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        # DICOM pixel data is row-major: rows (j) outer, columns (i) inner.
        stored = (array[:, :, k].T.astype(np.int32) - intercept).astype("<i2")
        ds.PixelData = stored.tobytes()
        path = out / f"slice_{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

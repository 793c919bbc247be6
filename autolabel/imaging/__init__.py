"""Images in and label files out: the only package that imports nibabel and pydicom.

Errors of those libraries are translated here into :class:`autolabel.errors.ImageError`.
The names below are loaded on first use: importing the package imports neither pydicom
nor nibabel, so a run starts without them and pays for each when it first needs it.

Public API:

* :func:`load_volume` -- a NIfTI file, a DICOM folder or a list of DICOM files;
  :func:`load_dicom_series` and :func:`load_nifti` for each kind.
* :func:`redbrick_layout` -- the label grid RedBrick expects for a DICOM series
  (the decision and its evidence are in :mod:`autolabel.imaging.layout`).
* :func:`write_label_nifti` / :func:`read_label_nifti` -- label files on an image's grid;
  :func:`write_volume_nifti` for images.
* :func:`write_dicom_series` -- a voxel array as a CT/MR DICOM series (seeding, tests).
* :func:`checksum_files` -- one digest of a task's input files (:func:`checksum_digests`
  from digests taken as they were downloaded).
* :class:`ImageLimits` -- the size limits every reader checks before decoding
  (:mod:`autolabel.imaging.checks`).
* :func:`from_altadb_instance` / :func:`to_altadb_instance` -- DICOM files from and to the
  parts a Datasets (AltaDB) project serves.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autolabel.imaging.altadb import from_altadb_instance, to_altadb_instance
    from autolabel.imaging.checks import ImageLimits
    from autolabel.imaging.dicom import load_dicom_series
    from autolabel.imaging.dicom_write import write_dicom_series
    from autolabel.imaging.files import checksum_digests, checksum_files, load_volume
    from autolabel.imaging.layout import Layout, native_affine, redbrick_layout
    from autolabel.imaging.nifti import (
        is_nifti_path,
        load_nifti,
        read_label_nifti,
        write_label_nifti,
        write_volume_nifti,
    )

#: Public name -> the submodule that defines it.
_HOMES = {
    "from_altadb_instance": "altadb",
    "to_altadb_instance": "altadb",
    "ImageLimits": "checks",
    "load_dicom_series": "dicom",
    "write_dicom_series": "dicom_write",
    "checksum_digests": "files",
    "checksum_files": "files",
    "load_volume": "files",
    "Layout": "layout",
    "native_affine": "layout",
    "redbrick_layout": "layout",
    "is_nifti_path": "nifti",
    "load_nifti": "nifti",
    "read_label_nifti": "nifti",
    "write_label_nifti": "nifti",
    "write_volume_nifti": "nifti",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


__all__ = [
    "ImageLimits",
    "Layout",
    "checksum_digests",
    "checksum_files",
    "from_altadb_instance",
    "is_nifti_path",
    "load_dicom_series",
    "load_nifti",
    "load_volume",
    "native_affine",
    "read_label_nifti",
    "redbrick_layout",
    "to_altadb_instance",
    "write_dicom_series",
    "write_label_nifti",
    "write_volume_nifti",
]

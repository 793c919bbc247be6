"""Images in and label files out: the only package that imports nibabel and pydicom.

Errors of those libraries are translated here into :class:`autolabel.errors.ImageError`.
"""

from __future__ import annotations

from autolabel.imaging.dicom_write import write_dicom_series

__all__ = ["write_dicom_series"]

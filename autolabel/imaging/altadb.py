"""DICOM instances as RedBrick Datasets (AltaDB) keep them: a JSON header and pixel frames.

A Datasets-backed project stores each instance as its DICOM header in the DICOM JSON model
(PS3.18 F.2) plus its frames, compressed, one object per frame; the transfer syntax is
given per frame. :func:`from_altadb_instance` puts one back together into a DICOM file the
way redbrick-sdk 2.35.4 does (``redbrick/utils/altadb.py`` ``save_dicom_dataset``: the
header from JSON, group 2 moved into the file meta, the frames encapsulated as the pixel
data). :func:`to_altadb_instance` splits a file the other way (the emulator's seeding), with
RLE Lossless frames, which pydicom decodes and encodes without extra codecs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, RLELossless

from autolabel.errors import ImageError

#: The DICOM JSON key of the transfer syntax, as AltaDB gives it per frame.
TRANSFER_SYNTAX_TAG = "00020010"
_PIXEL_DATA_TAG = "7FE00010"


def to_altadb_instance(path: str | Path) -> tuple[dict[str, Any], str, list[bytes]]:
    """``(header as DICOM JSON, transfer syntax UID, frames)`` of one DICOM file.

    Uncompressed pixel data is compressed with RLE Lossless first, so that every frame is
    one encapsulated fragment as AltaDB serves it. The header keeps the file meta (group 2)
    and leaves out the pixel data.
    """
    try:
        ds = dcmread(path)
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        pixels = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=frames)]
        header = {**ds.file_meta.to_json_dict(), **ds.to_json_dict()}
    except (InvalidDicomError, OSError, ValueError, RuntimeError, AttributeError) as exc:
        raise ImageError(f"{path}: cannot split the DICOM file into AltaDB parts ({exc})") from exc
    header.pop(_PIXEL_DATA_TAG, None)
    return header, str(ds.file_meta.TransferSyntaxUID), pixels


def from_altadb_instance(
    header: dict[str, Any], transfer_syntax: str, frames: list[bytes], destination: Path
) -> Path:
    """Write one AltaDB instance as a DICOM file at ``destination`` and return the path.

    Follows redbrick/utils/altadb.py: ``Dataset.from_json(header)``, the transfer syntax of
    the first frame, group 2 into the file meta, ``PixelData = encapsulate(frames)``.
    Raises :class:`~autolabel.errors.ImageError` naming ``destination`` on a bad header.
    """
    if not frames:
        raise ImageError(f"{destination}: the AltaDB instance has no frames")
    try:
        ds = Dataset.from_json(header)
        meta = FileMetaDataset()
        for element in list(ds):
            if element.tag.group == 2:
                meta.add(element)
                del ds[element.tag]
        meta.TransferSyntaxUID = UID(transfer_syntax)
        ds.file_meta = meta
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        destination.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(destination, enforce_file_format=True)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ImageError(f"{destination}: cannot rebuild the DICOM file ({exc})") from exc
    return destination

"""Entry points on paths: what kind of input a task brought, and a digest of it."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from autolabel.errors import ImageError
from autolabel.imaging.checks import ImageLimits
from autolabel.imaging.dicom import load_dicom_series
from autolabel.imaging.nifti import is_nifti_path, load_nifti
from autolabel.records import Volume

PathLike = str | os.PathLike[str]


def _folder_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files under ``folder`` (recursively), DICOMDIR excluded."""
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name.upper() != "DICOMDIR"
    ]
    return files


def _sniff_nifti(path: Path) -> bool:
    """Whether a file without a NIfTI name holds one (NIfTI-1/2 magic, gzipped or not)."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fp:
            block = fp.read(348)
    except (OSError, EOFError):
        return False
    return block[344:348] in (b"n+1\0", b"ni1\0") or block[4:8] in (b"n+2\0", b"ni2\0")


def load_volume(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    source: str = "",
    limits: ImageLimits | None = None,
) -> Volume:
    """Load a series from a NIfTI file, a folder of DICOM files, or a list of DICOM files.

    * A path ending in ``.nii``/``.nii.gz`` (alone, or as the only item of a list), or a
      single file holding NIfTI magic whatever its name, is read with :func:`load_nifti`.
    * A folder is read as one DICOM series of all files in it (hidden files and DICOMDIR
      skipped); any other file or list of files with :func:`load_dicom_series`.
    * Raises :class:`ImageError` for a missing path, an empty folder, or a list that mixes
      NIfTI and DICOM items, and for any series the readers refuse (``limits``, checked
      before decoding; see :mod:`autolabel.imaging.checks`).
    """
    items = (
        [Path(path_or_paths)]
        if isinstance(path_or_paths, str | os.PathLike)
        else [Path(p) for p in path_or_paths]
    )
    what = source or (str(items[0]) if items else "series")
    if not items:
        raise ImageError(f"{what}: no files given")
    for item in items:
        if not item.exists():
            raise ImageError(f"{what}: {item} does not exist")
    niftis = [p for p in items if is_nifti_path(p)]
    if not niftis and len(items) == 1 and items[0].is_file() and _sniff_nifti(items[0]):
        niftis = items
    if niftis:
        if len(items) > 1:
            raise ImageError(
                f"{what}: a series is one NIfTI file or a set of DICOM files, got "
                f"{len(items)} items including {niftis[0].name}"
            )
        return load_nifti(items[0], source=what, limits=limits)
    if len(items) == 1 and items[0].is_dir():
        files = _folder_files(items[0])
        if not files:
            raise ImageError(f"{what}: folder {items[0]} holds no files")
        return load_dicom_series(files, source=what, limits=limits)
    return load_dicom_series(items, source=what, limits=limits)


def checksum_files(paths: Sequence[PathLike]) -> str:
    """SHA-256 hex digest of the contents of ``paths``, independent of their order and names.

    The same set of file contents always gives the same digest, so a ledger can tell
    whether a task's images changed since they were labelled.
    """
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
        digests.append(digest.digest())
    return checksum_digests(digests)


def checksum_digests(digests: Sequence[bytes]) -> str:
    """:func:`checksum_files` from the SHA-256 digest of each file, when the files were
    hashed already (as they were downloaded): the same value, without reading them again."""
    combined = hashlib.sha256()
    for d in sorted(digests):
        combined.update(d)
    return combined.hexdigest()

"""NIfTI in and out: image volumes, and label files on an image's exact grid.

Writing a label map is bound by memory layout, not by compression (perf-limits.md §1): the
array goes out in Fortran order straight from its buffer, compressed by isal's igzip at
level 1 (13 ms instead of 386 ms for ``nib.save`` on a 512x512x300 map). Reading a
``.nii.gz`` decompresses with isal and views the bytes without copying.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import numpy.typing as npt
from isal import igzip, isal_zlib

from autolabel.errors import ConversionError, ImageError
from autolabel.files import atomic_file
from autolabel.imaging.checks import ImageLimits, check_affine, check_dtype
from autolabel.records import Volume

# nibabel and isal ship no complete annotations; go through Any rather than silencing
# mypy call by call.
_nib: Any = nib
_igzip: Any = igzip
_ZLIB_ERROR: type[Exception] = cast("type[Exception]", isal_zlib.error)
_GZIP_WBITS = 31  # zlib's "write a gzip member" window setting
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return os.fspath(path).lower().endswith(_NIFTI_SUFFIXES)


_HEADER_PROBE = 540  # bytes: enough for a NIfTI-2 header, a NIfTI-1 header is 348


def _open(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed on the fly when it is gzip (isal)."""
    fp: io.BufferedIOBase = open(path, "rb")  # noqa: SIM115 - handed to the caller, closed there
    if fp.read(2) == b"\x1f\x8b":
        fp.close()
        gz: io.BufferedIOBase = _igzip.open(path, "rb")
        return gz
    fp.seek(0)
    return fp


def _header_of(head: bytes, path: Path, what: str) -> Any:
    if len(head) < 348:
        raise ImageError(
            f"{what}: {path} is not a NIfTI file ({len(head)} bytes, a header alone is 348)"
        )
    size = int.from_bytes(head[:4], "little")
    if size not in (348, 540):
        size = int.from_bytes(head[:4], "big")
    magic = head[344:348] if size == 348 else head[4:8]
    if size not in (348, 540) or magic not in (b"n+1\0", b"n+2\0"):
        raise ImageError(
            f"{what}: {path} is not a single-file NIfTI image (no NIfTI header); upload the "
            "image itself as .nii or .nii.gz"
        )
    header_class = _nib.Nifti2Header if size == 540 else _nib.Nifti1Header
    # check=False: nibabel would log its repairs; the values are checked here instead.
    return header_class.from_fileobj(io.BytesIO(head), check=False)


def _read(path: Path, what: str, limits: ImageLimits) -> tuple[Any, npt.NDArray[Any]]:
    """Header and array of a NIfTI-1/2 file (``.gz`` or not), refusing before decoding.

    The header is read first; the data type, zero-size dimensions and the size limits are
    checked on the header's claim, so at most ``offset + voxels * itemsize`` bytes are ever
    decompressed (a lying header cannot grow memory past the limits). The array is a
    read-only view of the one buffer the file is decompressed into.
    """
    try:
        with _open(path) as fp:
            head = fp.read(_HEADER_PROBE)
            header = _header_of(head, path, what)
            shape = tuple(int(n) for n in header.get_data_shape())
            dtype = np.dtype(header.get_data_dtype())
            check_dtype(dtype, what)
            count = limits.check(shape, dtype.itemsize, what)
            offset = int(header.get_data_offset())
            buffer = bytearray(offset + count * dtype.itemsize)
            view = memoryview(buffer)
            filled = min(len(head), len(buffer))
            view[:filled] = head[:filled]
            while filled < len(buffer):
                got = fp.readinto(view[filled:])
                if not got:
                    raise ImageError(
                        f"{what}: {path} is truncated: the header promises "
                        f"{len(buffer):,} bytes, the file holds {filled:,}. Upload it again."
                    )
                filled += got
    except EOFError as exc:
        raise ImageError(
            f"{what}: {path} is truncated (the gzip stream ends early); upload it again"
        ) from exc
    except (OSError, _ZLIB_ERROR) as exc:
        raise ImageError(f"{what}: cannot read {path} ({exc}); upload it again") from exc
    except (
        _nib.filebasedimages.ImageFileError,
        _nib.spatialimages.HeaderDataError,
        _nib.wrapstruct.WrapStructError,
        ValueError,
        TypeError,
    ) as exc:
        raise ImageError(f"{what}: {path} is not a valid NIfTI file ({exc})") from exc
    data = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    data.flags.writeable = False
    return header, data.reshape(shape, order="F")


def _squeeze_to_3d(array: npt.NDArray[Any], path: Path, what: str) -> npt.NDArray[Any]:
    shape = array.shape
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageError(
            f"{what}: {path} has shape {shape}; a series must be one 3-D volume "
            "(4-D files with one volume are accepted). Split multi-volume files and upload "
            "2-D images with a third axis of size 1."
        )
    return array


def load_nifti(
    path: str | os.PathLike[str], *, source: str = "", limits: ImageLimits | None = None
) -> Volume:
    """Read a ``.nii``/``.nii.gz`` image into a :class:`Volume` in the file's own voxel order.

    Contract:

    * The array is exactly the file's array (never reoriented), read-only; 4-D (or 5-D)
      files with trailing axes of size 1 are squeezed to 3-D, anything else that is not
      3-D raises :class:`ImageError`.
    * ``scl_slope``/``scl_inter`` are applied when they are not the identity (float32
      result); otherwise the stored dtype is kept.
    * ``Volume.affine`` is the header's best affine (sform, else qform, else pixdim);
      ``qform``, ``qform_code`` and ``sform_code`` are copied so label files can repeat them.
    * Refused with :class:`ImageError` naming the file and the fix, before anything is
      decoded: over ``limits`` (default :class:`ImageLimits`), a zero-size dimension, RGB or
      complex data; then a truncated or corrupt file, and an affine that is not finite or
      singular, or a scaling that is not finite.
    """
    file = Path(path)
    what = source or str(file)
    header, data = _read(file, what, limits or ImageLimits())
    data = _squeeze_to_3d(data, file, what)
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise ImageError(f"{what}: the header's qform/sform cannot be read ({exc})") from exc
    check_affine(affine, what)
    slope, inter = header.get_slope_inter()
    if not np.isfinite(slope if slope is not None else 1.0) or not np.isfinite(inter or 0.0):
        raise ImageError(
            f"{what}: the header's intensity scaling (scl_slope {slope}, scl_inter {inter}) "
            "is not finite; fix or clear it"
        )
    if slope is not None and (slope != 1.0 or (inter or 0.0) != 0.0):
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter or 0.0)
    return Volume(
        array=data,
        affine=affine,
        modality="",
        source=what,
        qform=_qform(header),
        qform_code=int(header["qform_code"]),
        sform_code=int(header["sform_code"]),
    )


def _qform(header: Any) -> npt.NDArray[np.float64] | None:
    """The header's qform matrix; None when its quaternion is numerically invalid."""
    try:
        return np.asarray(header.get_qform(), dtype=np.float64)
    except ValueError:  # nibabel: "w2 should be positive" on rounding noise
        return None


def _label_dtype(label_map: npt.NDArray[Any], what: str) -> np.dtype[Any]:
    if label_map.dtype == np.bool_:
        return np.dtype(np.uint8)
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ConversionError(
            f"{what}: the label map has dtype {label_map.dtype}; it must hold integers "
            "(take the argmax of the model output first)."
        )
    if label_map.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(label_map.min()), int(label_map.max())
    if lo < 0 or hi > 65535:
        raise ConversionError(
            f"{what}: label values must lie in 0..65535, found {lo}..{hi}; RedBrick stores "
            "label files as uint8 or uint16."
        )
    return np.dtype(np.uint8) if hi <= 255 else np.dtype(np.uint16)


def _header(volume: Volume, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    """The 352 header bytes of a single-file NIfTI-1 on the volume's grid."""
    header = _nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(volume.affine if volume.qform is None else volume.qform, volume.qform_code)
    header.set_sform(volume.affine, volume.sform_code)
    header.set_xyzt_units(2)  # millimetres, as dicom2nifti writes
    header.set_slope_inter(1.0, 0.0)
    header.set_data_offset(352)
    out = io.BytesIO()
    header.write_to(out)
    return out.getvalue()


def _write_nifti(target: Path, head: bytes, body: memoryview) -> None:
    """Header then array bytes; gzip (isal level 1) when the name ends in ``.gz``."""
    chunks: list[bytes | memoryview] = [head, body]
    if target.name.lower().endswith(".gz"):
        compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, _GZIP_WBITS)
        chunks = [compressor.compress(head), compressor.compress(body), compressor.flush()]
    with atomic_file(target) as stream:
        for chunk in chunks:
            stream.write(chunk)


def write_label_nifti(
    label_map: npt.NDArray[Any],
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    max_value: int | None = None,
) -> Path:
    """Write ``label_map`` as a NIfTI label file on ``volume``'s grid; return the path.

    Contract:

    * ``label_map`` is an integer (or bool) array of exactly ``volume.shape`` with values
      in 0..65535, else :class:`ConversionError`. It is stored as uint8 when every value
      fits, else uint16; values are not changed.
    * The file has the image's shape, affine (sform) and qform/codes
      (:attr:`Volume.qform`), so RedBrick maps each voxel onto the image voxel of the same
      index. F-ordered arrays are written without a copy.
    * ``.nii.gz`` (gzip through isal, level 1) or ``.nii`` by the suffix of ``path``.
    * ``max_value``: the map's largest value, when the caller knows it (e.g. from
      :func:`autolabel.inference.spec.label_counts`, which also refused negative values):
      the scan for the stored dtype is skipped. The file is the same.
    * Atomic (:func:`autolabel.files.atomic_file`): a temporary file in the same folder,
      renamed over ``path``; a killed writer's leftover is removed by the next run.
    """
    target = Path(path)
    what = volume.source or str(target)
    if not is_nifti_path(target):
        raise ValueError(f"label file name must end in .nii or .nii.gz, got {target.name}")
    array = np.asarray(label_map)
    if array.shape != volume.shape:
        raise ConversionError(
            f"{what}: the label map has shape {array.shape} but the image has "
            f"{volume.shape}; a label file must be on the image's exact voxel grid."
        )
    known = max_value is not None and 0 <= max_value <= 65535
    if not known or not np.issubdtype(array.dtype, np.integer):
        dtype = _label_dtype(array, what)
    else:
        dtype = np.dtype(np.uint8) if cast(int, max_value) <= 255 else np.dtype(np.uint16)
    data = np.asfortranarray(array.astype(dtype, copy=False))
    # The transpose of an F-ordered array is C-contiguous: its buffer is the NIfTI order.
    body = data.T.data.cast("B")
    head = _header(volume, data.shape, dtype)
    _write_nifti(target, head, body)
    return target


def read_label_nifti(
    path: str | os.PathLike[str],
) -> tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.float64]]:
    """Read a label file: its 3-D integer array (file order, read-only) and best affine.

    Raises :class:`ImageError` when the file is unreadable, not 3-D or not integer.
    """
    volume = load_nifti(path)  # a scaled file comes back as float32: refused below
    if not np.issubdtype(volume.array.dtype, np.integer):
        raise ImageError(f"{path}: not an integer label file (dtype {volume.array.dtype})")
    return cast("npt.NDArray[np.integer[Any]]", volume.array), volume.affine


def write_volume_nifti(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write an image volume as NIfTI (its own dtype, grid and header geometry), atomically.

    Useful to keep a DICOM series as the NIfTI RedBrick's exporter would make, or to hand
    a volume to tools that read NIfTI.
    """
    target = Path(path)
    if not is_nifti_path(target):
        raise ValueError(f"image file name must end in .nii or .nii.gz, got {target.name}")
    array = volume.array
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    data = np.asfortranarray(array)
    head = _header(volume, data.shape, data.dtype)
    body = data.T.data.cast("B")
    _write_nifti(target, head, body)
    return target

"""DICOM series in: real pydicom test files and known-answer synthetic series."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from autolabel.emulator.phantom import make_phantom
from autolabel.errors import ImageError
from autolabel.imaging import load_dicom_series, load_volume, write_dicom_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _oblique(affine: np.ndarray) -> np.ndarray:
    out = affine.copy()
    out[:3, :3] = _rotation(0, 0.35) @ _rotation(2, -0.25) @ affine[:3, :3]
    return out


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((40, 32, 12), seed=3)


def _write(tmp_path: Path, hu: np.ndarray, affine: np.ndarray, **kw) -> list[Path]:
    paths = write_dicom_series(hu, affine, tmp_path / "series", **kw)
    random.Random(7).shuffle(paths)
    return paths


def _copies(src: str, folder: Path, positions: list[list[float]]) -> list[Path]:
    """A series of real slices: the same file at several positions, one series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    out = []
    for n, position in enumerate(positions):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = position
        ds.InstanceNumber = len(positions) - n  # deliberately opposite to position order
        path = folder / f"copy{n}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _hu(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def test_shuffled_series_reads_back_the_written_hu(tmp_path, phantom):
    """Files in random order come back as the written HU on the LAS grid, int16."""
    vol = load_dicom_series(_write(tmp_path, phantom.hu, phantom.affine_lps))
    assert vol.array.dtype == np.int16
    assert vol.orientation == "LAS"
    # Plain axial: [column, reversed row, slice] (see autolabel.imaging.layout).
    assert np.array_equal(vol.array, phantom.hu[:, ::-1, :])
    assert vol.array.flags.f_contiguous
    assert vol.modality == "CT"
    assert np.allclose(vol.spacing, phantom.spacing)
    names = [Path(p).name for p in vol.slice_items]
    assert names == [f"slice_{k + 1:05d}.dcm" for k in range(12)]


@pytest.mark.parametrize("oblique", [False, True], ids=["axial", "oblique"])
def test_voxel_at_known_patient_coordinate_lands_where_expected(tmp_path, phantom, oblique):
    """A marked voxel is found at the world point its DICOM geometry puts it."""
    affine = _oblique(phantom.affine_lps) if oblique else phantom.affine_lps
    hu = np.zeros(phantom.hu.shape, dtype=np.int16)
    hu[5, 7, 3] = 1500
    vol = load_dicom_series(_write(tmp_path, hu, affine))
    ras = LPS_TO_RAS @ affine @ np.array([5, 7, 3, 1.0])
    index = np.rint(vol.world_to_voxel(ras[:3])).astype(int)
    assert np.allclose(vol.world_to_voxel(ras[:3]), index, atol=1e-4)
    assert vol.array[tuple(index)] == 1500
    assert np.count_nonzero(vol.array == 1500) == 1


def test_mr_series_keeps_unsigned_values_and_modality(tmp_path):
    """MR values (no HU rescale) come back unchanged with modality MR."""
    values = np.random.default_rng(0).integers(0, 3000, size=(16, 12, 5)).astype(np.int16)
    vol = load_dicom_series(_write(tmp_path, values, np.diag([0.9, 0.9, 2.0, 1.0]), modality="MR"))
    assert vol.modality == "MR"
    assert np.array_equal(vol.array, values[:, ::-1, :])


def test_header_pool_gives_the_same_volume_as_serial(tmp_path, phantom):
    """Headers parsed in the process pool give exactly the serial result."""
    paths = _write(tmp_path, phantom.hu, phantom.affine_lps)
    serial = load_dicom_series(paths, header_workers=1)
    pooled = load_dicom_series(paths, header_workers=2)
    assert np.array_equal(serial.array, pooled.array)
    assert np.array_equal(serial.affine, pooled.affine)


def test_load_volume_reads_a_folder(tmp_path, phantom):
    """A folder of slices (plus a hidden file) loads as one series."""
    _write(tmp_path, phantom.hu, phantom.affine_lps)
    (tmp_path / "series" / ".DS_Store").write_bytes(b"junk")
    vol = load_volume(tmp_path / "series", source="task T1 / series S")
    assert vol.shape == phantom.hu.shape
    assert vol.source == "task T1 / series S"


# ----------------------------------------------------------------- bad series


def test_missing_slice_is_named(tmp_path, phantom):
    """A gap of two spacings says one slice is missing and between which files."""
    paths = sorted(write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s"))
    del paths[5]
    with pytest.raises(
        ImageError, match=r"1 slice\(s\) missing between .*slice_00005.*slice_00007"
    ):
        load_dicom_series(paths, source="task 42")


def test_uneven_spacing_is_rejected(tmp_path, phantom):
    """Slices 1.7 spacings apart are reported as uneven spacing."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s")
    ds = pydicom.dcmread(paths[-1])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) - 0.3 * phantom.spacing[2]
    ds.save_as(paths[-1])
    with pytest.raises(ImageError, match="uneven slice spacing"):
        load_dicom_series(paths)


def test_gantry_tilt_is_rejected(tmp_path, phantom):
    """Positions sheared along y (a tilted gantry) are refused with the angle."""
    tilted = phantom.affine_lps.copy()
    tilted[1, 2] = 0.2 * tilted[2, 2]
    with pytest.raises(ImageError, match=r"gantry tilt.*11\.\d+ degrees"):
        load_dicom_series(_write(tmp_path, phantom.hu, tilted))


def test_mixed_orientation_is_rejected(tmp_path, phantom):
    """A localizer-like slice with another orientation is named."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s")
    ds = pydicom.dcmread(paths[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[3])
    with pytest.raises(ImageError, match=r"mixed orientation.*slice_00004"):
        load_dicom_series(paths)


def test_mixed_sizes_are_rejected(tmp_path, phantom):
    """A slice of another matrix size in the series is named."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "a")
    other = write_dicom_series(
        phantom.hu[:20], phantom.affine_lps, tmp_path / "b", series_uid=_series_uid(paths[0])
    )
    with pytest.raises(ImageError, match="mixed image sizes"):
        load_dicom_series([*paths[:5], other[6]])


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_two_series_are_rejected(tmp_path, phantom):
    """Files of two SeriesInstanceUIDs are one error naming both."""
    a = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "a", series_uid="1.2.3.1")
    b = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "b", series_uid="1.2.3.2")
    with pytest.raises(ImageError, match=r"span 2 series \(1\.2\.3\.1, 1\.2\.3\.2\)"):
        load_dicom_series(a[:3] + b[3:])


def test_duplicate_position_is_rejected(tmp_path, phantom):
    """Two files at one position (a second stack or a copy) are refused."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s")
    dup = tmp_path / "s" / "dup.dcm"
    shutil.copy(paths[2], dup)
    with pytest.raises(ImageError, match="same position"):
        load_dicom_series([*paths, dup])


def test_non_image_object_is_rejected(tmp_path, phantom):
    """A DICOM SEG among the items is named as not an image."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s")
    seg = get_testdata_file("liver_1frame.dcm")
    with pytest.raises(ImageError, match=r"liver_1frame\.dcm is not an image \(Segmentation"):
        load_dicom_series([*paths, seg])


def test_not_a_dicom_file_is_rejected(tmp_path, phantom):
    """A stray text file gives an ImageError naming it."""
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "s")
    junk = tmp_path / "s" / "notes.txt"
    junk.write_text("not dicom")
    with pytest.raises(ImageError, match=r"notes\.txt: not a DICOM file"):
        load_dicom_series([*paths, junk])


def test_multiframe_without_plane_positions_is_rejected():
    """emri_small (frames stripped of functional groups) cannot be placed: clear error."""
    with pytest.raises(ImageError, match=r"frame 1\) has no usable ImagePositionPatient"):
        load_dicom_series([get_testdata_file("emri_small.dcm")])


# ----------------------------------------------------------------- real files


def test_real_ct_slice_matches_pydicom_hu():
    """CT_small.dcm (GE, rescale -1024) loads as one slice with pydicom's HU values."""
    path = get_testdata_file("CT_small.dcm")
    vol = load_dicom_series([path])
    assert vol.shape == (128, 128, 1)
    assert np.array_equal(vol.array[:, ::-1, 0], _hu(path).T)
    assert vol.spacing == pytest.approx((0.661468, 0.661468, 5.0))


def test_real_ct_with_14_bits_stored_matches_pydicom():
    """693_UNCI (real head CT, 14 of 16 bits, signed) is sign-corrected like pydicom."""
    path = get_testdata_file("693_UNCI.dcm")
    vol = load_dicom_series([path])
    assert np.array_equal(vol.array[:, ::-1, 0], _hu(path).T)
    assert vol.array.min() < -2000  # negative values survived the bit correction


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_and_other_syntaxes_decode_to_the_same_series(tmp_path, name):
    """Real MR slices in RLE, JPEG-LS, JPEG 2000, big endian and implicit VR all decode."""
    reference = _hu(get_testdata_file("MR_small.dcm"))
    positions = [[-83.9063, -91.2, 6.6406 + 0.8 * k] for k in (2, 0, 1)]
    vol = load_dicom_series(_copies(get_testdata_file(name), tmp_path / "s", positions))
    assert vol.shape == (64, 64, 3)
    for k in range(3):
        assert np.array_equal(vol.array[:, ::-1, k], reference.T)
    assert vol.spacing == pytest.approx((0.3125, 0.3125, 0.8))


def test_real_j2k_ct_matches_pydicom_hu():
    """693_J2KR (JPEG 2000 lossless head CT) decodes to pydicom's HU."""
    path = get_testdata_file("693_J2KR.dcm")
    vol = load_dicom_series([path])
    assert vol.array.dtype == np.int16
    assert np.array_equal(vol.array[:, ::-1, 0], _hu(path).T)


def test_enhanced_multiframe_ct_is_sorted_by_position():
    """eCT_Supplemental (enhanced CT, frames stored top-down) stacks frames by position."""
    path = get_testdata_file("eCT_Supplemental.dcm")
    vol = load_dicom_series([path])
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.int32) - 1024  # shared Pixel Value Transformation
    z = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    lower, upper = np.argsort(z)
    assert vol.shape == (512, 512, 2)
    assert vol.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    # IOP (-1,0,0, 0,1,0): columns run to the patient's right and rows posterior, so
    # LAS reverses both; slice 0 is the inferior frame.
    assert np.array_equal(vol.array[::-1, ::-1, 0], frames[lower].T)
    assert np.array_equal(vol.array[::-1, ::-1, 1], frames[upper].T)
    assert vol.orientation == "LAS"


def test_missing_decoder_names_the_dicom_codecs_extra(tmp_path):
    """Without the codec packages a JPEG-LS series fails with an ImageError naming the extra."""
    positions = [[0.0, 0.0, float(k)] for k in range(2)]
    paths = _copies(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "s", positions)
    script = (
        "import sys\n"
        "for m in ('pylibjpeg', 'openjpeg', 'libjpeg', 'gdcm', 'jpeg_ls', 'pyjpegls'):\n"
        "    sys.modules[m] = None\n"
        "from autolabel.errors import ImageError\n"
        "from autolabel.imaging import load_dicom_series\n"
        "try:\n"
        f"    load_dicom_series({[str(p) for p in paths]!r})\n"
        "except ImageError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "JPEG-LS" in out
    assert "autolabel[dicom-codecs]" in out
    assert "copy" in out  # names the file

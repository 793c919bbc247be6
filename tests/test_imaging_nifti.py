"""NIfTI images in, label files out: nibabel's real test files and known-answer label maps."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator.phantom import make_phantom
from autolabel.errors import ConversionError, ImageError
from autolabel.imaging import (
    checksum_files,
    load_dicom_series,
    load_nifti,
    load_volume,
    read_label_nifti,
    write_dicom_series,
    write_label_nifti,
    write_volume_nifti,
)
from autolabel.records import Volume

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """A small phantom CT series on disk and its volume."""
    folder = tmp_path_factory.mktemp("ct")
    phantom = make_phantom((48, 40, 16), seed=11)
    paths = write_dicom_series(phantom.hu, phantom.affine_lps, folder)
    return load_dicom_series(paths), phantom, paths


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"])
def test_load_nifti_keeps_the_files_array_and_affine(name):
    """Real NIfTI files (big endian, gzip, qform != sform) load unreoriented, as nibabel reads them."""
    img = nib.load(NIB_DATA / name)
    vol = load_nifti(NIB_DATA / name)
    assert np.array_equal(vol.array, np.asanyarray(img.dataobj))
    assert np.allclose(vol.affine, img.affine)
    assert vol.qform_code == int(img.header["qform_code"])
    assert vol.sform_code == int(img.header["sform_code"])
    assert vol.slice_items == ()


def test_4d_with_one_volume_is_squeezed(tmp_path):
    """A 4-D file with a single volume loads as that 3-D volume."""
    img = nib.load(NIB_DATA / "example4d.nii.gz")
    first = np.asanyarray(img.dataobj)[..., :1]
    nib.save(nib.Nifti1Image(first, img.affine, img.header), tmp_path / "one.nii.gz")
    vol = load_volume(tmp_path / "one.nii.gz")
    assert vol.shape == (128, 96, 24)
    assert np.array_equal(vol.array, first[..., 0])


def test_4d_with_several_volumes_is_an_image_error():
    """example4d.nii.gz (two volumes) is refused with its shape and what to do."""
    with pytest.raises(ImageError, match=r"shape \(128, 96, 24, 2\).*one 3-D volume"):
        load_nifti(NIB_DATA / "example4d.nii.gz", source="task 7 / series fmri")


def test_nifti2_loads(tmp_path):
    """A NIfTI-2 file (from nibabel's example) loads with its affine."""
    img = nib.load(NIB_DATA / "example_nifti2.nii.gz")
    data = np.asanyarray(img.dataobj)[..., 1]
    nib.save(nib.Nifti2Image(data, img.affine), tmp_path / "n2.nii.gz")
    vol = load_nifti(tmp_path / "n2.nii.gz")
    assert np.array_equal(vol.array, data)
    assert np.allclose(vol.affine, img.affine)


def test_scaled_nifti_applies_slope_and_intercept(tmp_path):
    """scl_slope/scl_inter are applied (float32), as nibabel applies them."""
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, tmp_path / "scaled.nii")
    vol = load_nifti(tmp_path / "scaled.nii")
    assert vol.array.dtype == np.float32
    assert np.allclose(vol.array, raw * 2.0 - 5.0)


def test_not_a_nifti_is_an_image_error(tmp_path):
    """Garbage with a .nii.gz name gives an ImageError naming the file."""
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(ImageError, match=r"bad\.nii\.gz"):
        load_nifti(bad)


# ----------------------------------------------------------------- label files


def test_label_roundtrip_on_dicom_grid(tmp_path, ct):
    """Labels come back voxel for voxel, uint8, with the image's shape and affine."""
    vol, phantom, _ = ct
    labels = np.asfortranarray(phantom.labels[:, ::-1, :])  # on the volume's LAS grid
    path = write_label_nifti(labels, vol, tmp_path / "seg.nii.gz")
    back, affine = read_label_nifti(path)
    assert back.dtype == np.uint8
    assert np.array_equal(back, labels)
    assert np.array_equal(affine, nib.load(path).affine)
    assert np.allclose(affine, vol.affine, atol=1e-5)
    with open(path, "rb") as fp:
        assert fp.read(2) == b"\x1f\x8b"


def test_label_header_matches_the_dicom2nifti_image_header(tmp_path, ct):
    """The label file passes the SDK's header check against the image NIfTI (shape, offset, affines)."""
    vol, phantom, _ = ct
    image = nib.load(write_volume_nifti(vol, tmp_path / "image.nii.gz"))
    seg = nib.load(write_label_nifti(phantom.labels[:, ::-1, :], vol, tmp_path / "seg.nii.gz"))
    imgh, segh = image.header, seg.header
    assert imgh.get_data_shape() == segh.get_data_shape()
    assert imgh.get_data_offset() == segh.get_data_offset()
    assert np.array_equal(imgh.get_best_affine(), segh.get_best_affine())
    assert np.array_equal(imgh.get_qform(), segh.get_qform())
    assert np.array_equal(imgh.get_sform(), segh.get_sform())
    assert (int(segh["qform_code"]), int(segh["sform_code"])) == (0, 2)  # as dicom2nifti


def test_label_file_is_byte_identical_to_nibabel_save(tmp_path, ct):
    """Uncompressed, our fast writer produces exactly nibabel's bytes for the same image."""
    vol, phantom, _ = ct
    labels = phantom.labels[:, ::-1, :]
    ours = write_label_nifti(labels, vol, tmp_path / "ours.nii")
    ref = nib.Nifti1Image(np.asfortranarray(labels), vol.affine)
    ref.header.set_xyzt_units(2)
    ref.header.set_slope_inter(1.0, 0.0)
    nib.save(ref, tmp_path / "ref.nii")
    assert ours.read_bytes() == (tmp_path / "ref.nii").read_bytes()


def test_c_ordered_and_wide_integer_maps_are_written_correctly(tmp_path, ct):
    """A C-ordered int64 map is converted (values unchanged) and comes back equal."""
    vol, phantom, _ = ct
    labels = np.ascontiguousarray(phantom.labels[:, ::-1, :].astype(np.int64))
    back, _ = read_label_nifti(write_label_nifti(labels, vol, tmp_path / "seg.nii.gz"))
    assert back.dtype == np.uint8
    assert np.array_equal(back, labels)


def test_values_over_255_are_stored_as_uint16(tmp_path, ct):
    """Instance ids above 255 switch the file to uint16 and survive."""
    vol, _, _ = ct
    labels = np.zeros(vol.shape, dtype=np.int32)
    labels[1, 2, 3] = 300
    labels[4, 5, 6] = 65535
    back, _ = read_label_nifti(write_label_nifti(labels, vol, tmp_path / "seg.nii.gz"))
    assert back.dtype == np.uint16
    assert back[1, 2, 3] == 300 and back[4, 5, 6] == 65535


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda s: np.zeros(s, dtype=np.float32), "dtype float32"),
        (lambda s: np.full(s, -1, dtype=np.int16), r"0\.\.65535, found -1"),
        (lambda s: np.full(s, 70000, dtype=np.int32), r"found 70000"),
        (lambda s: np.zeros((s[0], s[1], s[2] + 1), dtype=np.uint8), "exact voxel grid"),
    ],
    ids=["float", "negative", "too-large", "wrong-shape"],
)
def test_invalid_label_maps_are_conversion_errors(tmp_path, ct, labels, message):
    """Non-integer, out-of-range or off-grid maps are refused and nothing is written."""
    vol, _, _ = ct
    with pytest.raises(ConversionError, match=message):
        write_label_nifti(labels(vol.shape), vol, tmp_path / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_replaces_the_old_file(tmp_path, ct):
    """Re-writing replaces the file and leaves no temporary files; a failed write keeps the old one."""
    vol, _, _ = ct
    target = tmp_path / "seg.nii.gz"
    write_label_nifti(np.zeros(vol.shape, np.uint8), vol, target)
    write_label_nifti(np.ones(vol.shape, np.uint8), vol, target)
    assert os.listdir(tmp_path) == ["seg.nii.gz"]
    with pytest.raises(ConversionError):
        write_label_nifti(np.full(vol.shape, -3, np.int8), vol, target)
    back, _ = read_label_nifti(target)
    assert np.all(back == 1)


def test_label_for_nifti_source_copies_its_qform_and_sform(tmp_path):
    """For a NIfTI image whose qform and sform differ, the label file repeats both and the codes."""
    source = NIB_DATA / "reoriented_anat_moved.nii"
    vol = load_nifti(source)
    labels = (np.asarray(vol.array) > np.median(vol.array)).astype(np.uint8)
    seg = nib.load(write_label_nifti(labels, vol, tmp_path / "seg.nii.gz"))
    img = nib.load(source)
    assert np.allclose(seg.header.get_qform(), img.header.get_qform(), atol=1e-5)
    assert np.allclose(seg.header.get_sform(), img.header.get_sform(), atol=1e-5)
    assert int(seg.header["qform_code"]) == int(img.header["qform_code"])
    assert int(seg.header["sform_code"]) == int(img.header["sform_code"])
    assert np.array_equal(np.asanyarray(seg.dataobj), labels)


def test_read_label_rejects_float_images(tmp_path):
    """A float image is not a label file."""
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "f.nii")
    with pytest.raises(ImageError, match="not an integer label file"):
        read_label_nifti(tmp_path / "f.nii")


def test_volume_nifti_roundtrip_keeps_hu_and_geometry(tmp_path, ct):
    """A DICOM volume written as NIfTI reads back identical (int16 HU, affine)."""
    vol, _, _ = ct
    back = load_nifti(write_volume_nifti(vol, tmp_path / "ct.nii.gz"))
    assert back.array.dtype == np.int16
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.affine, vol.affine, atol=1e-5)


# ----------------------------------------------------------------- entry points


def test_load_volume_dispatches_and_rejects_mixed_items(tmp_path, ct):
    """NIfTI path -> NIfTI, file list -> DICOM, a list mixing both -> ImageError."""
    vol, _, paths = ct
    assert load_volume(NIB_DATA / "anatomical.nii").shape == (33, 41, 25)
    assert np.array_equal(load_volume(paths).array, vol.array)
    with pytest.raises(ImageError, match="one NIfTI file or a set of DICOM files"):
        load_volume([NIB_DATA / "anatomical.nii", paths[0]])
    with pytest.raises(ImageError, match="does not exist"):
        load_volume(tmp_path / "nothing.nii.gz")


def test_checksum_ignores_order_and_sees_content_changes(tmp_path, ct):
    """The digest is the same in any order and changes when one file changes."""
    _, _, paths = ct
    digest = checksum_files(paths)
    assert digest == checksum_files(list(reversed(paths)))
    copy = tmp_path / "changed.dcm"
    copy.write_bytes(paths[0].read_bytes()[:-1] + b"\x01")
    assert checksum_files([copy, *paths[1:]]) != digest


def test_nifti_without_its_suffix_is_recognised(tmp_path):
    """A downloaded item named without .nii.gz still loads as NIfTI (by its magic)."""
    item = tmp_path / "item-0"
    item.write_bytes((NIB_DATA / "standard.nii.gz").read_bytes())
    vol = load_volume([item])
    assert np.array_equal(vol.array, np.asanyarray(nib.load(NIB_DATA / "standard.nii.gz").dataobj))


@pytest.mark.parametrize("largest", [2, 300])
def test_a_known_largest_value_writes_the_same_file(tmp_path: Path, largest: int) -> None:
    """``max_value`` (the largest value, known from the counts) skips the dtype scan and
    writes the same bytes as the scan would: uint8 up to 255, else uint16."""
    labels = np.zeros((8, 9, 5), dtype=np.int16)
    labels[2:5, 3:6, 1:3] = largest
    volume = Volume(array=np.zeros(labels.shape, dtype=np.int16), affine=np.eye(4))
    scanned = write_label_nifti(labels, volume, tmp_path / "scanned.nii")
    known = write_label_nifti(labels, volume, tmp_path / "known.nii", max_value=largest)
    assert known.read_bytes() == scanned.read_bytes()
    stored, _ = read_label_nifti(known)
    assert stored.dtype == (np.uint8 if largest <= 255 else np.uint16)

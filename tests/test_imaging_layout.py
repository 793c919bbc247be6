"""Our label grid for DICOM series is exactly the NIfTI that dicom2nifti writes for RedBrick."""

from __future__ import annotations

import doctest
import random

import dicom2nifti
import dicom2nifti.settings as d2n_settings
import numpy as np
import pytest

from autolabel.emulator.phantom import make_phantom
from autolabel.imaging import layout, load_dicom_series, write_dicom_series


@pytest.fixture
def sdk_dicom2nifti():
    """dicom2nifti configured as redbrick-sdk 2.35.4's exporter configures it, then restored."""
    saved = (d2n_settings.validate_slice_increment, d2n_settings.validate_slicecount)
    d2n_settings.disable_validate_slice_increment()
    d2n_settings.disable_validate_slicecount()
    yield dicom2nifti.dicom_series_to_nifti
    d2n_settings.validate_slice_increment, d2n_settings.validate_slicecount = saved


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _affine(columns: list[list[float]], origin: list[float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.array(columns, dtype=float).T
    out[:3, 3] = origin
    return out


_AXIAL = _affine([[0.8, 0, 0], [0, 0.8, 0], [0, 0, 2.5]], [-16, -12, 40])
GEOMETRIES = {
    "axial": _AXIAL,
    "oblique": np.block(
        [
            [
                _rotation(0, 0.4) @ _rotation(1, -0.2) @ _rotation(2, 0.3) @ _AXIAL[:3, :3],
                _AXIAL[:3, 3:],
            ],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
    "coronal": _affine([[0.7, 0, 0], [0, 0, -0.7], [0, 3.0, 0]], [-15, -20, 60]),
    "sagittal": _affine([[0, 0.9, 0], [0, 0, -0.9], [-2.0, 0, 0]], [30, -20, 60]),
    "feet-first-flipped": _affine([[-0.8, 0, 0], [0, -0.8, 0], [0, 0, -2.5]], [30, 20, 60]),
    "near-45-degrees": np.block(
        [
            [_rotation(2, np.pi / 4 - 0.01) @ _AXIAL[:3, :3], _AXIAL[:3, 3:]],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_layout_equals_dicom2nifti_on_shuffled_series(tmp_path, sdk_dicom2nifti, name):
    """Shape, every voxel and the affine equal dicom2nifti's output for the same files."""
    hu = make_phantom((40, 30, 9), seed=5).hu
    paths = write_dicom_series(hu, GEOMETRIES[name], tmp_path / "series")
    random.Random(1).shuffle(paths)
    ours = load_dicom_series(paths)
    theirs = sdk_dicom2nifti(str(tmp_path / "series"), str(tmp_path / "d2n.nii.gz"))["NII"]
    expected = np.asanyarray(theirs.dataobj)
    assert ours.shape == expected.shape
    assert np.array_equal(ours.array, expected)
    assert np.allclose(ours.affine, theirs.affine, atol=1e-4)
    assert ours.orientation == "LAS"


def test_layout_doc_examples_hold():
    """The numpydoc examples in autolabel.imaging.layout are correct."""
    result = doctest.testmod(layout)
    assert result.attempted >= 3
    assert result.failed == 0


def test_layout_is_a_pure_axis_permutation_with_flips():
    """Applying the layout moves every voxel to where its world position says."""
    native = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    affine = layout.native_affine([0, 1, 0, 0, 0, -1], (2.0, 1.5), [5, -3, 7], [-3.0, 0, 0])
    lay = layout.redbrick_layout(affine, native.shape)
    out = lay.apply(native)
    assert out.shape == lay.shape(native.shape)
    for index in np.ndindex(native.shape):
        world = affine @ np.array([*index, 1.0])
        target = np.rint(np.linalg.solve(lay.affine, world)[:3]).astype(int)
        assert out[tuple(target)] == native[index]

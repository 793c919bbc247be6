"""nnU-Net v2 parity: ``autolabel predict`` with an ``nnunet`` card against ``nnUNetv2_predict``.

The model folder is built by nnU-Net's own planner and trainer class (tests/framework_models.py).
Both tools run as the user runs them, in their own processes, on the same input file; the
label files must hold the same voxels on the same grid (identical affine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from framework_models import CONFIGURATION, PLANS, TRAINER

from autolabel.emulator.phantom import make_phantom
from autolabel.imaging import write_dicom_series

pytestmark = pytest.mark.slow

DATASET = "Dataset901_Tiny"
BIN = Path(sys.executable).parent


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    out[i, i] = out[j, j] = c
    out[i, j], out[j, i] = -s, s
    return out


def _ct(shape: tuple[int, int, int] = (44, 36, 14)) -> np.ndarray:
    return make_phantom(shape, seed=7, fov_mm=(160.0, 130.0, 70.0)).hu.astype(np.int16)


#: A RAS grid and an LPS grid tilted about all three axes, neither on the plans' spacing.
GRIDS = {
    "ras": np.diag([3.6, 3.6, 5.0, 1.0]),
    "lps-oblique": np.block(
        [
            [
                _rotation(0, 0.3)
                @ _rotation(1, -0.2)
                @ _rotation(2, 0.25)
                @ np.diag([-3.6, -3.6, 5.0]),
                np.array([[80.0], [60.0], [-30.0]]),
            ],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
}


def _card(folder: Path, model: Path, **options: object) -> Path:
    lines = [f'folder = "{model}"']
    for key, value in options.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    card = folder / "model.toml"
    card.write_text(
        'name = "tiny-nnunet"\nkind = "nnunet"\n[labels]\n1 = "liver"\n2 = "spleen"\n'
        "[options]\n" + "\n".join(lines) + "\n"
    )
    return card


def _autolabel_predict(source: Path, card: Path, out: Path) -> nib.Nifti1Image:
    subprocess.run(
        [
            str(BIN / "autolabel"),
            "predict",
            str(source),
            "--model",
            str(card),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-png",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return nib.load(out)


def _nnunet_predict(
    results: Path, image: Path, out_dir: Path, *, folds: tuple[int, ...], tta: bool, step: float
) -> nib.Nifti1Image:
    """``nnUNetv2_predict`` on one image (nnU-Net's ``_0000`` channel naming)."""
    inputs = out_dir / "in"
    inputs.mkdir(parents=True)
    shutil.copy(image, inputs / "case_0000.nii.gz")
    command = [
        str(BIN / "nnUNetv2_predict"), "-i", str(inputs), "-o", str(out_dir / "out"),
        "-d", DATASET, "-c", CONFIGURATION, "-p", PLANS, "-tr", TRAINER,
        "-f", *map(str, folds), "-step_size", str(step), "-device", "cpu",
        "-npp", "1", "-nps", "1", "--disable_progress_bar",
    ]  # fmt: skip
    if not tta:
        command.append("--disable_tta")
    env = dict(os.environ, nnUNet_results=str(results), nnUNet_raw=str(out_dir),
               nnUNet_preprocessed=str(out_dir))  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300, env=env)
    return nib.load(out_dir / "out" / "case.nii.gz")


def _assert_same(ours: nib.Nifti1Image, theirs: nib.Nifti1Image, image: Path) -> None:
    """Voxel-identical labels; our affine is the input's own, bit for bit, and nnU-Net's
    (SimpleITK rewrites the header from its direction cosines) to float32 precision."""
    expected = np.asanyarray(theirs.dataobj)
    got = np.asanyarray(ours.dataobj)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"
    assert len(np.unique(expected)) > 1, "the model labels nothing: parity would be vacuous"
    assert np.array_equal(ours.affine, nib.load(image).affine)
    assert np.allclose(ours.affine, theirs.affine, rtol=0, atol=1e-5)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_nnunet_card_equals_nnunetv2_predict_on_nifti(
    nnunet_results: Path, tmp_path: Path, grid: str
) -> None:
    """RAS and LPS-oblique NIfTI: same labels on the same grid as nnUNetv2_predict."""
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(_ct(), GRIDS[grid]), image)
    model = nnunet_results / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    card = _card(tmp_path, model, folds=[0], mirroring=False, step_size=0.5)
    ours = _autolabel_predict(image, card, tmp_path / "ours.nii.gz")
    theirs = _nnunet_predict(
        nnunet_results, image, tmp_path / "nnunet", folds=(0,), tta=False, step=0.5
    )
    _assert_same(ours, theirs, image)


@pytest.mark.parametrize(
    ("folds", "tta", "step"),
    [((0, 1), False, 0.5), ((0,), True, 0.5), ((0, 1), True, 0.8)],
    ids=["ensemble", "mirroring", "ensemble-mirroring-step0.8"],
)
def test_nnunet_card_follows_folds_mirroring_and_step(
    nnunet_results: Path, tmp_path: Path, folds: tuple[int, ...], tta: bool, step: float
) -> None:
    """Fold ensembles, test-time mirroring and the step size give nnU-Net's own result."""
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(_ct((52, 40, 14)), GRIDS["ras"]), image)
    model = nnunet_results / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    card = _card(tmp_path, model, folds=list(folds), mirroring=tta, step_size=step)
    ours = _autolabel_predict(image, card, tmp_path / "ours.nii.gz")
    theirs = _nnunet_predict(
        nnunet_results, image, tmp_path / "nnunet", folds=folds, tta=tta, step=step
    )
    _assert_same(ours, theirs, image)


def test_nnunet_card_on_dicom_equals_nnunetv2_on_its_dicom2nifti_conversion(
    nnunet_results: Path, tmp_path: Path
) -> None:
    """A DICOM series: our labels equal nnU-Net's on the NIfTI dicom2nifti makes of it."""
    import dicom2nifti
    import dicom2nifti.settings

    affine = GRIDS["lps-oblique"].copy()
    series = tmp_path / "series"
    write_dicom_series(_ct(), affine, series)
    dicom2nifti.settings.disable_validate_slice_increment()
    converted = tmp_path / "converted.nii.gz"
    dicom2nifti.dicom_series_to_nifti(str(series), str(converted))
    model = nnunet_results / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    card = _card(tmp_path, model, folds=[0], mirroring=False, step_size=0.5)
    ours = _autolabel_predict(series, card, tmp_path / "ours.nii.gz")
    theirs = _nnunet_predict(
        nnunet_results, converted, tmp_path / "nnunet", folds=(0,), tta=False, step=0.5
    )
    expected = np.asanyarray(theirs.dataobj)
    got = np.asanyarray(ours.dataobj)
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"
    assert len(np.unique(expected)) > 1
    assert np.allclose(ours.affine, theirs.affine, atol=1e-4)


def test_nnunet_probabilities_are_nnunets_own(nnunet_results: Path) -> None:
    """Asked for, the nnU-Net card returns nnU-Net's return_probabilities softmax on the
    volume grid; its argmax is the label map ``predict`` gives."""
    from autolabel.inference import load_model
    from autolabel.records import Volume

    model_folder = nnunet_results / DATASET / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    card = _card(model_folder.parents[2], model_folder, folds=[0], mirroring=False)
    model = load_model(card, device="cpu")
    volume = Volume(array=_ct(), affine=GRIDS["lps-oblique"], modality="CT")
    labels, probabilities = model.predict_probabilities(volume)
    assert probabilities.shape == (3, *volume.shape)
    assert np.allclose(probabilities.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(labels, model.predict(volume))
    assert np.array_equal(probabilities.argmax(0), labels)

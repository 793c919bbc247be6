"""MONAI bundle parity: a ``monai-bundle`` card against ``python -m monai.bundle run``.

The bundle has MONAI's own layout (``configs/metadata.json``, ``configs/inference.json``
with preprocessing that reorients, resamples and rescales, a sliding-window inferer, and
postprocessing that inverts the preprocessing and saves the labels; ``models/model.pt``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monai.bundle")

from framework_models import build_monai_bundle

from autolabel.emulator.phantom import make_phantom
from autolabel.inference import load_model

BIN = Path(sys.executable).parent


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_monai_bundle(tmp_path / "tiny-organs")


def test_bundle_card_equals_monai_bundle_run(bundle: Path, tmp_path: Path) -> None:
    """LPS 3 x 3 x 5 mm CT: the bundle's own transforms, inferer and inversion, voxel for voxel."""
    data = tmp_path / "data"
    data.mkdir()
    image = data / "ct.nii.gz"
    affine = np.diag([-3.0, -3.0, 5.0, 1.0])
    affine[:3, 3] = [70.0, 60.0, -30.0]
    hu = make_phantom((48, 40, 14), seed=2, fov_mm=(144.0, 120.0, 70.0)).hu.astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), image)
    card = tmp_path / "model.toml"
    card.write_text(
        'name = "tiny-organs"\nkind = "monai-bundle"\n[labels]\n1 = "liver"\n2 = "spleen"\n'
        f'[options]\nbundle = "{bundle}"\n'
    )
    ours = tmp_path / "ours.nii.gz"
    subprocess.run(
        [str(BIN / "autolabel"), "predict", str(image), "--model", str(card), "--out", str(ours),
         "--device", "cpu", "--no-png"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file",
         str(bundle / "configs" / "inference.json"), "--meta_file",
         str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(data)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    theirs = nib.load(bundle / "eval" / "ct_seg.nii.gz")
    got = np.asanyarray(nib.load(ours).dataobj)
    expected = np.asanyarray(theirs.dataobj).squeeze()
    assert got.shape == expected.shape == hu.shape
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"
    assert len(np.unique(expected)) > 1
    assert np.array_equal(nib.load(ours).affine, nib.load(image).affine)
    assert np.allclose(theirs.affine, affine, atol=1e-5)
    model = load_model(card, device="cpu")
    digest = hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert model.spec.weights_sha256 == digest

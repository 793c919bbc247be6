"""MONAI bundle parity: a ``monai-bundle`` card against ``python -m monai.bundle run``.

The bundle has MONAI's own layout (``configs/metadata.json``, ``configs/inference.json``
with preprocessing that reorients, resamples and rescales, a sliding-window inferer, and
postprocessing that inverts the preprocessing and saves the labels; ``models/model.pt``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

monai_nets = pytest.importorskip("monai.networks.nets")

import torch  # noqa: E402

from autolabel.inference import load_model  # noqa: E402
from autolabel.phantom import make_phantom  # noqa: E402

BIN = Path(sys.executable).parent
NETWORK = {
    "_target_": "BasicUNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "features": [4, 4, 8, 8, 16, 4],
}
INFERENCE = {
    "imports": ["$import glob"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/nonexistent",
    "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii.gz'))",
    "device": "$torch.device('cpu')",
    "network_def": NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1,
                   "shuffle": False, "num_workers": 0},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False,
             "output_postfix": "seg"},
        ],
    },
    "handlers": [
        {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
         "load_dict": {"model": "@network"}},
    ],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device",
                  "val_data_loader": "@dataloader", "network": "@network",
                  "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers"},
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@evaluator.run()"],
}  # fmt: skip
METADATA = {
    "version": "0.1.0",
    "monai_version": "1.6.1",
    "name": "tiny-organs",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": 3}},
    },
}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-organs"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    torch.manual_seed(0)
    args = {k: v for k, v in NETWORK.items() if k != "_target_"}
    torch.save(monai_nets.BasicUNet(**args).state_dict(), folder / "models" / "model.pt")
    return folder


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

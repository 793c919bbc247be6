"""Trained-model folders built at test time by the frameworks' own code (no downloads).

* :func:`build_nnunet_results` -- nnU-Net v2's own fingerprint extraction and experiment
  planner on a few phantom CTs, shrunk to a tiny patch and feature count, and the network
  nnU-Net's trainer class builds from those plans, saved per fold as nnU-Net saves a
  ``checkpoint_final.pth``. The weights are random (seeded per fold): parity with the
  framework's own predictor does not depend on what the network learnt.
* :func:`build_totalsegmentator_weights` -- the same, laid out as TotalSegmentator's weights
  folder for one task (it is nnU-Net underneath).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from autolabel.emulator.phantom import make_phantom

TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"


def _raw_dataset(raw: Path, name: str, labels: dict[str, int], cases: int) -> Path:
    """``cases`` phantom CTs (RAS, 4 x 4 x 5 mm) with their label maps, nnU-Net raw layout."""
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    classes = max(labels.values())
    for case in range(cases):
        phantom = make_phantom((40, 32, 16), seed=case, fov_mm=(160.0, 128.0, 80.0))
        affine = np.diag([4.0, 4.0, 5.0, 1.0])
        nib.save(
            nib.Nifti1Image(phantom.hu.astype(np.int16), affine),
            folder / "imagesTr" / f"case_{case:03d}_0000.nii.gz",
        )
        seg = np.minimum(phantom.labels, classes).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, affine), folder / "labelsTr" / f"case_{case:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def _shrink(plans: dict[str, Any]) -> None:
    """A two-stage, 4/8-feature network on 16^3 patches: seconds per volume on a CPU."""
    config = plans["configurations"][CONFIGURATION]
    config["patch_size"] = [16, 16, 16]
    config["batch_size"] = 2
    arch = config["architecture"]["arch_kwargs"]
    arch["n_stages"] = 2
    arch["features_per_stage"] = [4, 8]
    arch["kernel_sizes"] = [[3, 3, 3], [3, 3, 3]]
    arch["strides"] = [[1, 1, 1], [2, 2, 2]]
    arch["n_conv_per_stage"] = [1, 1]
    arch["n_conv_per_stage_decoder"] = [1]
    plans["configurations"] = {CONFIGURATION: config}


def _nnunet_model_folder(
    raw: Path, preprocessed: Path, model_folder: Path, dataset_id: int, folds: tuple[int, ...]
) -> None:
    """Plan with nnU-Net's own planner, then save one random-weight checkpoint per fold."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    os.environ["nnUNet_raw"] = str(raw)  # noqa: SIM112 (nnU-Net's own names)
    os.environ["nnUNet_preprocessed"] = str(preprocessed)  # noqa: SIM112
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
    plan_experiments([dataset_id])
    name = convert_id_to_dataset_name(dataset_id)
    plans = json.loads((preprocessed / name / f"{PLANS}.json").read_text())
    _shrink(plans)
    dataset_json = json.loads((raw / name / "dataset.json").read_text())
    model_folder.mkdir(parents=True)
    (model_folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (model_folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    shutil.copy(
        preprocessed / name / "dataset_fingerprint.json", model_folder / "dataset_fingerprint.json"
    )
    manager = PlansManager(plans)
    config = manager.get_configuration(CONFIGURATION)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    channels = determine_num_input_channels(manager, config, dataset_json)
    fingerprint = json.loads((model_folder / "dataset_fingerprint.json").read_text())
    sample = _normalised_case(raw / name, fingerprint)
    for fold in folds:
        torch.manual_seed(fold)
        net = nnUNetTrainer.build_network_architecture(
            manager, config, channels, heads, enable_deep_supervision=False
        )
        _balance_classes(net, sample)
        (model_folder / f"fold_{fold}").mkdir()
        # The keys nnUNetTrainer.save_checkpoint writes and nnUNetPredictor reads.
        torch.save(
            {
                "network_weights": net.state_dict(),
                "optimizer_state": None,
                "grad_scaler_state": None,
                "logging": {},
                "_best_ema": None,
                "current_epoch": 0,
                "init_args": {
                    "plans": plans,
                    "configuration": CONFIGURATION,
                    "fold": fold,
                    "dataset_json": dataset_json,
                },
                "trainer_name": TRAINER,
                "inference_allowed_mirroring_axes": (0, 1, 2),
            },
            model_folder / f"fold_{fold}" / "checkpoint_final.pth",
        )


def _normalised_case(folder: Path, fingerprint: dict[str, Any]) -> Any:
    """The first training image as nnU-Net's CT normalisation sees it, (1, 1, z, y, x)."""
    import torch

    stats = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    image = nib.load(next(iter(sorted((folder / "imagesTr").glob("*.nii.gz")))))
    data = np.asarray(image.dataobj, dtype=np.float32).T
    data = np.clip(data, stats["percentile_00_5"], stats["percentile_99_5"])
    data = (data - stats["mean"]) / max(stats["std"], 1e-8)
    return torch.from_numpy(np.ascontiguousarray(data))[None, None]


def _balance_classes(net: Any, sample: Any) -> None:
    """Shift the output biases so that a random network labels a good share of the
    sample with every class (else it labels nearly everything background)."""
    import torch

    with torch.no_grad():
        logits = net(sample)[0].flatten(1)
        layer = net.decoder.seg_layers[-1]
        for channel, share in zip(range(1, logits.shape[0]), (0.5, 0.75), strict=False):
            margin = logits[channel] - logits[0]
            layer.bias[channel] -= torch.quantile(margin, share)


def build_nnunet_results(root: Path, folds: tuple[int, ...] = (0, 1)) -> Path:
    """An ``nnUNet_results`` folder holding ``Dataset901_Tiny`` trained with ``folds``.

    Returns the results root; the model folder is
    ``<root>/Dataset901_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres``.
    """
    raw, preprocessed, results = root / "raw", root / "preprocessed", root / "results"
    labels = {"background": 0, "liver": 1, "spleen": 2}
    _raw_dataset(raw, "Dataset901_Tiny", labels, cases=2)
    model = results / "Dataset901_Tiny" / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    _nnunet_model_folder(raw, preprocessed, model, 901, folds)
    return results


def build_totalsegmentator_weights(root: Path, nnunet_model: Path, task: str, fast: bool) -> Path:
    """A TotalSegmentator weights folder (``TOTALSEG_WEIGHTS_PATH``) for ``task``.

    Each dataset folder TotalSegmentator's own task table names for the task holds the
    nnU-Net model folder ``nnunet_model`` (plans, checkpoints), its ``dataset.json`` labels
    replaced by TotalSegmentator's class map for the task: exactly what its predictor loads.
    """
    from totalsegmentator.map_to_binary import class_map

    from autolabel.inference.external import totalsegmentator_datasets

    names = class_map[task]
    for dataset in totalsegmentator_datasets(task, fast):
        target = root / dataset / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
        shutil.copytree(nnunet_model, target)
        dataset_json = json.loads((target / "dataset.json").read_text())
        if len(dataset_json["labels"]) != len(names) + 1:
            raise ValueError(
                f"{nnunet_model} has {len(dataset_json['labels'])} labels, not {len(names) + 1}"
            )
        dataset_json["labels"] = {"background": 0, **{v: k for k, v in names.items()}}
        (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return root


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


def build_monai_bundle(folder: Path) -> Path:
    """A MONAI bundle in MONAI's own layout: ``configs/metadata.json``, ``configs/inference.json``
    (reorient, resample, rescale; sliding window; softmax, Invertd, argmax, SaveImaged) and
    ``models/model.pt`` (a seeded random BasicUNet with 3 output channels)."""
    import torch
    from monai.networks.nets import BasicUNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    torch.manual_seed(0)
    args = {k: v for k, v in NETWORK.items() if k != "_target_"}
    torch.save(BasicUNet(**args).state_dict(), folder / "models" / "model.pt")
    return folder

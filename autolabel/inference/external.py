"""Runners for models of other frameworks: nnU-Net v2, TotalSegmentator, MONAI bundles.

Each framework is an optional extra, imported only when its card is loaded; a missing one
raises :class:`ModelError` naming the extra to install. None of them may download: the
weights must already be on disk, and the runner checks before calling the framework.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.errors import ConfigError, ModelError
from autolabel.inference.card import ModelCard
from autolabel.inference.runners import LoadedModel, TorchModel, weights_digest
from autolabel.records import Volume


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise :class:`ModelError` saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"{module} is not installed: pip install 'autolabel[{extra}]' ({exc})"
        ) from exc


def _folder(card: ModelCard, key: str) -> Path:
    value = card.options.get(key)
    if not value:
        raise ConfigError(f"model card {card.path}: [options] {key} is required for {card.kind}")
    folder = (card.folder / str(value)).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"model card {card.path}: {key} folder not found: {folder}")
    return folder


class NnUNetModel(LoadedModel):
    """An nnU-Net v2 trained model folder (``[options] folder``, ``folds``, ``checkpoint``).

    The volume goes to nnU-Net as a ``(1, k, j, i)`` array with spacing reversed, the
    layout of its SimpleITK reader; nnU-Net does its own resampling, normalisation and
    sliding window, and returns labels on that grid, which are transposed back.
    """

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        predictor_module = require("nnunetv2.inference.predict_from_raw_data", "nnunet")
        folder = _folder(card, "folder")
        folds = card.options.get("folds", [0])
        checkpoint = str(card.options.get("checkpoint", "checkpoint_final.pth"))
        spec = card.spec(weights_sha256=weights_digest(list(folder.glob(f"fold_*/{checkpoint}"))))
        super().__init__(card, spec, device)
        self.predictor = predictor_module.nnUNetPredictor(
            tile_step_size=float(card.options.get("step_size", 0.5)),
            use_gaussian=True,
            use_mirroring=bool(card.options.get("mirroring", False)),
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            allow_tqdm=False,
        )
        self.predictor.initialize_from_trained_model_folder(
            str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint
        )

    def _predict(self, volume: Volume) -> object:
        image = np.ascontiguousarray(volume.array.T, dtype=np.float32)[None]
        properties = {"spacing": list(volume.spacing[::-1])}
        labels = self.predictor.predict_single_npy_array(image, properties, None, None, False)
        # The transpose of nnU-Net's C-ordered (z, y, x) map is F-ordered: no copy but the cast.
        return np.asarray(labels).T.astype(self.spec.label_dtype, copy=False)


def totalsegmentator_weights_dir() -> Path:
    """Where TotalSegmentator keeps its weights (``TOTALSEG_WEIGHTS_PATH`` or its home)."""
    explicit = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


class TotalSegmentatorModel(LoadedModel):
    """TotalSegmentator's python API on a NIfTI copy of the volume, weights already on disk.

    ``[options] task`` (default ``total``), ``fast``, ``datasets`` (the weight folders the
    task needs, e.g. ``["Dataset291_TotalSegmentator_part1_organs_1559subj"]``): every one
    must exist in :func:`totalsegmentator_weights_dir`, otherwise loading fails rather than
    letting TotalSegmentator download.
    """

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.api = require("totalsegmentator.python_api", "totalsegmentator")
        weights = totalsegmentator_weights_dir()
        datasets = [str(d) for d in card.options.get("datasets", [])]
        missing = [d for d in datasets if not (weights / d).is_dir()]
        if not weights.is_dir() or missing or not datasets:
            raise ModelError(
                f"TotalSegmentator weights are not on disk in {weights} "
                f"(missing: {', '.join(missing) or 'the [options] datasets list'}); autolabel "
                "never downloads them: copy them there or set TOTALSEG_WEIGHTS_PATH"
            )
        spec = card.spec(weights_sha256=weights_digest(sorted(weights.glob("*/**/*.pth"))))
        super().__init__(card, spec, device)

    def _predict(self, volume: Volume) -> object:
        from autolabel.imaging import write_volume_nifti

        device = "gpu" if self.device.type == "cuda" else "cpu"
        if self.device.type == "cuda" and self.device.index:
            device = f"gpu:{self.device.index}"
        with tempfile.TemporaryDirectory(prefix="autolabel-totalseg-") as scratch:
            image = write_volume_nifti(volume, Path(scratch) / "image.nii.gz")
            result = self.api.totalsegmentator(
                str(image),
                None,
                ml=True,
                task=str(self.card.options.get("task", "total")),
                fast=bool(self.card.options.get("fast", False)),
                device=device,
                quiet=True,
                skip_saving=True,
            )
            # TotalSegmentator returns its labels on the input grid as a nibabel image.
            return np.asarray(result.dataobj).astype(self.spec.label_dtype)


def load_monai_bundle(card: ModelCard, device: torch.device, autocast: str | None) -> TorchModel:
    """A MONAI bundle's network (``models/model.ts``, or ``network_def`` plus
    ``models/model.pt``) run by :class:`TorchModel` with the card's pre/postprocessing."""
    bundle = require("monai.bundle", "monai")
    folder = _folder(card, "bundle")
    scripted = folder / "models" / "model.ts"
    state = folder / "models" / "model.pt"
    if scripted.is_file():
        net: torch.nn.Module = torch.jit.load(str(scripted), map_location=device)  # type: ignore[no-untyped-call]
        digest = weights_digest([scripted])
    else:
        config = next(
            (
                folder / "configs" / f"inference.{ext}"
                for ext in ("json", "yaml")
                if (folder / "configs" / f"inference.{ext}").is_file()
            ),
            None,
        )
        if config is None or not state.is_file():
            raise ConfigError(
                f"MONAI bundle {folder}: needs models/model.ts, or configs/inference.json "
                "and models/model.pt"
            )
        parser = bundle.ConfigParser()
        parser.read_config(str(config))
        parser["bundle_root"] = str(folder)
        net = parser.get_parsed_content(str(card.options.get("network", "network_def")))
        weights = torch.load(str(state), map_location=device, weights_only=True)
        net.load_state_dict(weights.get("model", weights) if isinstance(weights, dict) else weights)
        digest = weights_digest([state])
    classes = card.options.get("classes")
    if classes is None:
        metadata = folder / "configs" / "metadata.json"
        if metadata.is_file():
            outputs = json.loads(metadata.read_text()).get("network_data_format", {})
            classes = outputs.get("outputs", {}).get("pred", {}).get("num_channels")
    return TorchModel(
        card,
        card.spec(weights_sha256=digest),
        device,
        net,
        autocast=autocast,
        classes=int(classes) if classes else None,
    )

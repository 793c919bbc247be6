"""Runners for models of other frameworks: nnU-Net v2, TotalSegmentator, MONAI bundles.

Each framework is an optional extra, imported only when its card is loaded; a missing one
raises :class:`ModelError` naming the extra to install. None of them may download: the
weights must already be on disk, and the runner checks before calling the framework.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.errors import ConfigError, ModelError
from autolabel.inference.card import ModelCard
from autolabel.inference.runners import LoadedModel, Probabilities, TorchModel, weights_digest
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

    has_probabilities = True

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

    def _probabilities(self, volume: Volume) -> tuple[object, Probabilities]:
        """nnU-Net's own ``return_probabilities``: its softmax on the input grid."""
        image = np.ascontiguousarray(volume.array.T, dtype=np.float32)[None]
        properties = {"spacing": list(volume.spacing[::-1])}
        labels, probabilities = self.predictor.predict_single_npy_array(
            image, properties, None, None, True
        )
        on_volume = np.asarray(probabilities, dtype=np.float32).transpose(0, 3, 2, 1)
        return np.asarray(labels).T.astype(self.spec.label_dtype, copy=False), on_volume


def totalsegmentator_weights_dir() -> Path:
    """Where TotalSegmentator keeps its weights (``TOTALSEG_WEIGHTS_PATH`` or its home)."""
    explicit = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


def totalsegmentator_datasets(task: str, fast: bool) -> list[str]:
    """The weight folders TotalSegmentator's own task table names for ``task`` (and fast)."""
    api = require("totalsegmentator.python_api", "totalsegmentator")
    tables = require("totalsegmentator.map_tasks_config", "totalsegmentator")
    try:
        config = api.get_task_config(task, fast=fast, quiet=True)
    except ValueError as exc:
        raise ConfigError(f"TotalSegmentator: {exc}") from exc
    ids = config["task_id"] if isinstance(config["task_id"], list) else [config["task_id"]]
    folders = []
    for task_id in ids:
        info = tables.TASK_ID_WEIGHTS_CONFIGS[task_id]
        folders.append(str(Path(info.get("rel_path") or "") / info["foldername"]))
    return folders


class TotalSegmentatorModel(LoadedModel):
    """TotalSegmentator's python API on a NIfTI copy of the volume, weights already on disk.

    ``[options] task`` (default ``total``) and ``fast`` pick the task; the weight folders it
    needs come from TotalSegmentator's own task table and must all exist in
    :func:`totalsegmentator_weights_dir`, otherwise loading raises :class:`ConfigError` (exit 2)
    rather than letting TotalSegmentator download. A card without ``[labels]`` takes them
    from TotalSegmentator's class map for the task. TotalSegmentator's usage statistics
    (a network call after each prediction) are switched off in its config file.
    """

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.api = require("totalsegmentator.python_api", "totalsegmentator")
        self.task = str(card.options.get("task", "total"))
        self.fast = bool(card.options.get("fast", False))
        weights = totalsegmentator_weights_dir()
        datasets = totalsegmentator_datasets(self.task, self.fast)
        missing = [d for d in datasets if not (weights / d).is_dir()]
        if missing:  # a setup problem, as a TorchScript card's missing file: exit 2
            raise ConfigError(
                f"TotalSegmentator task {self.task!r} needs weights that are not on disk: "
                f"{', '.join(str(weights / d) for d in missing)}; autolabel never downloads "
                "them: copy them there or set TOTALSEG_WEIGHTS_PATH"
            )
        if not card.labels:
            class_map = require("totalsegmentator.map_to_binary", "totalsegmentator").class_map
            card = dataclasses.replace(card, labels=dict(class_map[self.task]))
        files = [p for d in datasets for p in (weights / d).glob("**/*.pth")]
        super().__init__(card, card.spec(weights_sha256=weights_digest(files)), device)
        config = require("totalsegmentator.config", "totalsegmentator")
        config.setup_totalseg()
        config.set_config_key("send_usage_stats", False)

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
                task=self.task,
                fast=self.fast,
                device=device,
                quiet=True,
                skip_saving=True,
            )
            # TotalSegmentator returns its labels on the input grid as a nibabel image.
            return np.asarray(result.dataobj).astype(self.spec.label_dtype)


def _bundle_config(folder: Path) -> Path:
    for ext in ("json", "yaml"):
        path = folder / "configs" / f"inference.{ext}"
        if path.is_file():
            return path
    raise ConfigError(f"MONAI bundle {folder}: no configs/inference.json (or .yaml)")


def _bundle_classes(folder: Path) -> int | None:
    metadata = folder / "configs" / "metadata.json"
    if not metadata.is_file():
        return None
    outputs = json.loads(metadata.read_text()).get("network_data_format", {}).get("outputs", {})
    channels = outputs.get("pred", {}).get("num_channels")
    return int(channels) if channels else None


class MonaiBundleModel(LoadedModel):
    """A MONAI bundle run as ``python -m monai.bundle run`` runs its inference config.

    ``configs/inference.json`` (``[options] bundle`` is the bundle folder) is parsed by
    ``monai.bundle.ConfigParser`` once: its ``network`` (weights from ``models/model.pt``
    as its CheckpointLoader loads them), ``preprocessing``, ``inferer`` and
    ``postprocessing``. Each volume goes through them as the bundle's evaluator sends one
    image: a NIfTI copy of the volume is the ``image`` item, the inferer's output is
    ``pred``, and the postprocessed ``pred`` (inverted to the input grid by the bundle's
    own ``Invertd``) is the label map. The bundle's ``SaveImaged`` steps are skipped:
    autolabel writes the label file.
    """

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        bundle = require("monai.bundle", "monai")
        transforms = require("monai.transforms", "monai")
        folder = _folder(card, "bundle")
        state = folder / "models" / "model.pt"
        if not state.is_file():
            raise ConfigError(f"MONAI bundle {folder}: models/model.pt not found")
        parser = bundle.ConfigParser()
        parser.read_config(str(_bundle_config(folder)))
        parser["bundle_root"] = str(folder)
        if "device" in parser:
            parser["device"] = f"$torch.device('{device}')"
        self.key = str(card.options.get("image_key", "image"))
        self.pred = str(card.options.get("pred_key", "pred"))
        super().__init__(card, card.spec(weights_sha256=weights_digest([state])), device)
        self.network: torch.nn.Module = parser.get_parsed_content(
            str(card.options.get("network", "network"))
        )
        weights = torch.load(str(state), map_location=device, weights_only=True)
        self.network.load_state_dict(weights.get("model", weights))
        self.network.eval().to(device)
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing")
        steps = [t for t in post.transforms if not isinstance(t, transforms.SaveImaged)]
        self.postprocessing = transforms.Compose(steps)

    def _predict(self, volume: Volume) -> object:
        from autolabel.imaging import write_volume_nifti

        with tempfile.TemporaryDirectory(prefix="autolabel-monai-") as scratch:
            image = write_volume_nifti(volume, Path(scratch) / "image.nii.gz")
            item = self.preprocessing({self.key: str(image)})
            with torch.inference_mode():
                batch = item[self.key][None].to(self.device)
                item[self.pred] = self.inferer(batch, self.network)[0]
            item = self.postprocessing(item)
        labels = np.asarray(item[self.pred].detach().cpu().numpy())
        if labels.ndim == 4 and labels.shape[0] == 1:
            labels = labels[0]
        return labels.astype(self.spec.label_dtype)


def load_monai_bundle(card: ModelCard, device: torch.device, autocast: str | None) -> LoadedModel:
    """A MONAI bundle: a TorchScript ``models/model.ts`` through our pipeline (the card's
    pre/postprocessing), else the bundle's own config through :class:`MonaiBundleModel`."""
    require("monai.bundle", "monai")
    folder = _folder(card, "bundle")
    scripted = folder / "models" / "model.ts"
    if not scripted.is_file():
        return MonaiBundleModel(card, device)
    net: torch.nn.Module = torch.jit.load(str(scripted), map_location=device)  # type: ignore[no-untyped-call]
    classes = card.options.get("classes") or _bundle_classes(folder)
    return TorchModel(
        card,
        card.spec(weights_sha256=weights_digest([scripted])),
        device,
        net,
        autocast=autocast,
        classes=int(classes) if classes else None,
    )

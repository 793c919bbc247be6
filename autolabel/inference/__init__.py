"""Segmentation models: cards, runners and our sliding-window inference.

The only package of autolabel that imports torch (lazily: listing cards does not).

Public API::

    model = load_model("phantom-unet", device="auto")   # once; keep it warm
    model.spec                # ModelSpec: name, version, labels, categories, weights_sha256
    labels = model.predict(volume)   # integer array of volume.shape, validated
    model.events              # DeviceEvent list: CUDA OOM -> smaller batch -> CPU
    list_models()             # ModelCard list from $AUTOLABEL_MODELS and the repo's models/
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from autolabel.inference.card import ModelCard, find_card, list_cards, models_dirs, read_card
from autolabel.inference.spec import ModelSpec, SegmentationModel, validate_output

if TYPE_CHECKING:
    from autolabel.inference.device import DeviceEvent
    from autolabel.inference.runners import LoadedModel


def __getattr__(name: str) -> object:
    """``LoadedModel`` and ``DeviceEvent`` on first use, so that importing stays torch-free."""
    if name == "LoadedModel":
        from autolabel.inference.runners import LoadedModel

        return LoadedModel
    if name == "DeviceEvent":
        from autolabel.inference.device import DeviceEvent

        return DeviceEvent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "auto",
    autocast: str | None = None,
) -> LoadedModel:
    """Load a model by card name (see :func:`models_dirs`) or card path, ready to predict.

    ``device`` is ``auto`` (first CUDA device, else CPU), ``cpu``, ``cuda`` or ``cuda:N``,
    or a comma-separated list of them (``cuda:0,cuda:1``): then one warm replica per device
    in a :class:`~autolabel.inference.replicas.ReplicaPool`, which the run's infer phase
    gives one worker each;
    ``autocast`` overrides the card's ``[runtime] autocast`` (``auto``, ``bf16``, ``fp16``,
    ``off``). Raises :class:`ConfigError` for an unknown or malformed card and
    :class:`ModelError` when the model's framework or weights are missing.
    """
    if "," in device:
        from autolabel.inference.replicas import ReplicaPool, split_devices

        replicas = [
            load_model(name_or_path, device=d, autocast=autocast) for d in split_devices(device)
        ]
        return ReplicaPool(replicas)
    card = read_card(find_card(name_or_path))
    ok, reason = card.availability()
    if not ok and card.kind in ("python", "torchscript"):
        from autolabel.errors import ModelError

        raise ModelError(f"model {card.name!r} cannot be loaded here: {reason}")
    if card.kind == "python":  # no torch unless the card's own code imports it
        from autolabel.inference.python_card import PythonModel, python_card_device

        return PythonModel(card, card.spec(), python_card_device(device))  # type: ignore[return-value]
    from autolabel.inference import external, runners
    from autolabel.inference.device import resolve_device
    from autolabel.inference.python_card import run_card_code

    torch_device = resolve_device(device)
    if card.kind == "torchscript":
        net = runners.load_torchscript(card, torch_device)
        return runners.TorchModel(card, card.spec(), torch_device, net, autocast=autocast)
    # A framework's own loader meeting a broken folder (a damaged plans.json, a bad
    # inference.json) raises its own errors: one usage error naming the card instead.
    if card.kind == "nnunet":
        return run_card_code(
            card, "loading the nnU-Net folder", lambda: external.NnUNetModel(card, torch_device)
        )
    if card.kind == "totalsegmentator":
        return external.TotalSegmentatorModel(card, torch_device)
    return run_card_code(
        card,
        "loading the MONAI bundle",
        lambda: external.load_monai_bundle(card, torch_device, autocast),
    )


def list_models() -> list[ModelCard]:
    """Every model card found, by name (see :func:`models_dirs` for where)."""
    return list_cards()


__all__ = [
    "DeviceEvent",
    "LoadedModel",
    "ModelCard",
    "ModelSpec",
    "SegmentationModel",
    "find_card",
    "list_models",
    "load_model",
    "models_dirs",
    "read_card",
    "validate_output",
]

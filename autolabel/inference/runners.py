"""Loaded models: the validated ``predict`` shared by every runner, and the torch runners.

* :class:`LoadedModel` -- base: modality check, runner call, output validation.
* :class:`TorchModel` -- any ``nn.Module``/TorchScript network through the card's
  preprocessing, our sliding window and postprocessing, with the CUDA OOM fallback.

A loaded model is meant to be kept warm: build it once with
:func:`autolabel.inference.load_model` and call ``predict`` for every volume, from one
thread at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from autolabel.errors import BadModelOutputError, ConfigError, ModelError
from autolabel.inference.card import ModelCard
from autolabel.inference.confidence import SeriesConfidence, region_confidence
from autolabel.inference.device import (
    DeviceEvent,
    autocast_dtype,
    is_out_of_memory,
)
from autolabel.inference.postprocess import postprocess
from autolabel.inference.preprocess import to_model_grid
from autolabel.inference.python_card import call_model, check_modality
from autolabel.inference.sliding_window import (
    sliding_window_labels,
    sliding_window_probabilities,
)
from autolabel.inference.spec import ModelSpec, validate_output
from autolabel.records import Volume

LabelMap = npt.NDArray[np.integer]
Probabilities = npt.NDArray[np.float32]
T = TypeVar("T")


class LoadedModel:
    """A model ready to run: ``spec``, ``predict(volume)``, the device and its events.

    ``events`` lists every :class:`DeviceEvent` (OOM: smaller batch, CPU fallback) since
    loading; the pipeline logs them into the ledger.
    """

    #: Whether this runner gives class probabilities (:meth:`predict_probabilities`).
    has_probabilities = False

    def __init__(self, card: ModelCard, spec: ModelSpec, device: torch.device) -> None:
        self.card = card
        self._spec = spec
        self.device = device
        self.events: list[DeviceEvent] = []

    @property
    def gives_confidence(self) -> bool:
        """Whether :meth:`predict_with_confidence` gives a confidence (else ``None``)."""
        return self.has_probabilities

    @property
    def spec(self) -> ModelSpec:
        """The model's declaration (labels, default categories, provenance)."""
        return self._spec

    def predict(self, volume: Volume) -> LabelMap:
        """A label map of ``volume.shape`` on the volume's grid, checked against the spec.

        Raises :class:`ModelError` when the volume's modality is not the model's or the
        model fails, :class:`BadModelOutputError` when its output breaks the contract.
        """
        check_modality(self._spec, volume)
        return validate_output(self._spec, volume, self._guarded(volume, self._predict))

    def _guarded(self, volume: Volume, call: Callable[[Volume], T]) -> T:
        """``call(volume)`` under :func:`~autolabel.inference.python_card.call_model`."""
        return call_model(self._spec.name, volume, call)

    def _predict(self, volume: Volume) -> object:
        raise NotImplementedError

    def predict_probabilities(self, volume: Volume) -> tuple[LabelMap, Probabilities]:
        """The label map of :meth:`predict` and the per-class probabilities behind it,
        ``(classes, *volume.shape)`` float32 (class ``c`` is label id ``c``; 0 is background).

        Asked for explicitly, so that :meth:`predict` never holds a float per class and
        voxel. Raises :class:`ModelError` for a runner that gives none.
        """
        labels, probabilities = self._guarded(volume, self._probabilities)
        if probabilities.shape[1:] != volume.shape:
            raise BadModelOutputError(
                f"model {self._spec.name!r}: probabilities of shape {probabilities.shape} do "
                f"not cover the volume's {volume.shape}"
            )
        return validate_output(self._spec, volume, labels), probabilities

    def _probabilities(self, volume: Volume) -> tuple[object, Probabilities]:
        raise ModelError(
            f"model {self._spec.name!r} ({self.card.kind}) does not give class probabilities"
        )

    def predict_with_confidence(self, volume: Volume) -> tuple[LabelMap, SeriesConfidence | None]:
        """The label map and the confidence of each label in it
        (:func:`autolabel.inference.confidence.region_confidence`), or ``None`` for a model
        that gives no probabilities: then the label map is :meth:`predict`'s."""
        if not self.gives_confidence:
            return self.predict(volume), None
        labels, probabilities = self.predict_probabilities(volume)
        return labels, region_confidence(labels, probabilities)


class TorchModel(LoadedModel):
    """A torch network run through the card's preprocessing, sliding window and postprocessing.

    Output channel ``c`` of the network is label id ``c``. On CUDA out-of-memory the
    windows per batch are halved (kept for later volumes); when one window does not fit,
    that volume runs on the CPU and the network goes back to the GPU afterwards. Each step
    is appended to ``events``. The same holds for :meth:`predict_probabilities`.
    """

    has_probabilities = True

    def __init__(
        self,
        card: ModelCard,
        spec: ModelSpec,
        device: torch.device,
        net: torch.nn.Module,
        *,
        autocast: str | None = None,
        classes: int | None = None,
    ) -> None:
        super().__init__(card, spec, device)
        net.eval().to(device)
        # channels-last weights make each window's output permute to (X, Y, Z, C) for free
        self.net: torch.nn.Module = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.autocast = autocast or card.autocast
        self.classes = classes or int(card.options.get("classes", max(spec.labels) + 1))
        self.batch = card.sliding_window.batch
        autocast_dtype(self.autocast, device)  # reject a bad setting at load time
        self._cpu_net: torch.nn.Module | None = None

    def network(self, device: torch.device) -> torch.nn.Module:
        """The network the windows run through on ``device``.

        On the CPU a TorchScript network is frozen once (:func:`freeze_for_inference`:
        BatchNorm folded into the convolution before it), built lazily so a CUDA model
        only pays for it on the out-of-memory fallback. Elsewhere ``self.net`` itself.
        """
        if device.type != "cpu":
            return self.net
        if self._cpu_net is None:
            self._cpu_net = freeze_for_inference(self.net)
        return self._cpu_net

    def _predict(self, volume: Volume) -> object:
        image, grid = to_model_grid(volume, self.card.preprocess)
        labels: LabelMap = grid.to_volume_grid(self._run(image, volume.source))  # type: ignore[assignment]
        postprocess(labels, self.card.postprocess, volume.spacing)
        return labels.astype(self._spec.label_dtype, copy=False)

    def _probabilities(self, volume: Volume) -> tuple[object, Probabilities]:
        """Softmax of the blended logits, with the same out-of-memory fallback as labels."""
        image, grid = to_model_grid(volume, self.card.preprocess)
        probabilities = self._run(image, volume.source, self._softmax_windows)
        on_volume = grid.probabilities_to_volume_grid(probabilities)
        labels = np.asfortranarray(on_volume.argmax(0)).astype(self._spec.label_dtype)
        postprocess(labels, self.card.postprocess, volume.spacing)
        return labels, on_volume

    def predict_with_confidence(self, volume: Volume) -> tuple[LabelMap, SeriesConfidence | None]:
        """:meth:`predict`'s label map, voxel for voxel, and the confidence of each label
        measured on the model's grid (its region there, before postprocessing).

        One pass of the windows: the argmax of the blended softmax is the labels path's
        argmax of the blended logits, resampled (nearest) to the volume as :meth:`predict`
        does; the probabilities are never resampled, so they cost a float per class and
        model-grid voxel only while the volume is measured.
        """
        check_modality(self._spec, volume)

        def measured(volume: Volume) -> tuple[LabelMap, SeriesConfidence]:
            image, grid = to_model_grid(volume, self.card.preprocess)
            probabilities = self._run(image, volume.source, self._softmax_windows)
            dtype = torch.uint8 if probabilities.shape[0] <= 256 else torch.int32
            on_model = probabilities.argmax(0).to(dtype)
            confidence = region_confidence(on_model.numpy(), probabilities.numpy())
            del probabilities
            labels: LabelMap = grid.to_volume_grid(on_model)  # type: ignore[assignment]
            postprocess(labels, self.card.postprocess, volume.spacing)
            return labels.astype(self._spec.label_dtype, copy=False), confidence

        labels, confidence = self._guarded(volume, measured)
        return validate_output(self._spec, volume, labels), confidence

    def _window_settings(self, device: torch.device, batch: int) -> dict[str, Any]:
        """The card's sliding-window keywords for ``device`` and ``batch``."""
        window = self.card.sliding_window
        return {
            "classes": self.classes,
            "patch": window.patch,
            "overlap": window.overlap,
            "blend": window.blend,
            "sigma_scale": window.sigma_scale,
            "batch": batch,
            "device": device,
            "autocast": autocast_dtype(self.autocast, device),
        }

    def _windows(self, image: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
        return sliding_window_labels(
            self.network(device), image, **self._window_settings(device, batch)
        )

    def _softmax_windows(
        self, image: torch.Tensor, device: torch.device, batch: int
    ) -> torch.Tensor:
        return sliding_window_probabilities(
            self.network(device), image, **self._window_settings(device, batch)
        )

    def _run(
        self,
        image: torch.Tensor,
        source: str,
        windows: Callable[[torch.Tensor, torch.device, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        windows = windows or self._windows
        while True:
            try:
                return windows(image, self.device, self.batch)
            except Exception as exc:
                if self.device.type != "cuda" or not is_out_of_memory(exc):
                    raise
                torch.cuda.empty_cache()
                if self.batch > 1:
                    self.batch //= 2
                    self.events.append(
                        DeviceEvent.now(
                            "oom-smaller-batch", str(self.device), self.batch, source, str(exc)
                        )
                    )
                    continue
                self.events.append(DeviceEvent.now("oom-cpu-fallback", "cpu", 1, source, str(exc)))
                break
        cpu = torch.device("cpu")
        self.net.to(cpu)
        try:
            return windows(image.to(cpu), cpu, 1)
        finally:
            self.net.to(self.device)


def freeze_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of a TorchScript ``net`` for CPU inference, else ``net`` itself.

    ``torch.jit.freeze`` inlines the weights as constants and folds each BatchNorm into the
    convolution before it (``Conv -> BN -> ReLU`` runs as one convolution and a ReLU): the
    same function up to float rounding, without BatchNorm's pass over every activation
    (12% of the phantom-unet's CPU forward time in a profile; bench/bench_sliding_window.py). Eager modules are returned unchanged, as
    is a network that cannot be frozen (the error is not the model's fault). Weights keep
    their memory format (channels-last).
    """
    if not isinstance(net, torch.jit.ScriptModule):
        return net
    try:
        frozen: torch.nn.Module = torch.jit.freeze(net.eval())
    except (RuntimeError, AttributeError):
        return net
    return frozen


def load_torchscript(card: ModelCard, device: torch.device) -> torch.nn.Module:
    """The card's TorchScript weights, loaded onto ``device``."""
    if card.weights is None or not card.weights.is_file():
        raise ConfigError(f"model card {card.path}: TorchScript weights not found: {card.weights}")
    try:
        with warnings.catch_warnings():
            # TorchScript is a supported card kind on purpose; torch 2.13 flags jit.load.
            warnings.simplefilter("ignore", DeprecationWarning)
            net: torch.nn.Module = torch.jit.load(str(card.weights), map_location=device)  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load TorchScript weights {card.weights}: {exc}") from exc
    return net


def weights_digest(paths: list[Path]) -> str:
    """sha256 over the given weight files (one file: its own sha256)."""
    from autolabel.inference.card import sha256_file

    digests = [sha256_file(p) for p in sorted(paths) if p.is_file()]
    if len(digests) <= 1:
        return digests[0] if digests else ""
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()

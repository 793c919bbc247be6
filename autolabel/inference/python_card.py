"""Python-card models without torch: a run with a numpy model (``ct-threshold``) starts
in well under a second, where importing torch alone takes seconds (issue 16).

* :func:`python_card_device` -- the device a python card is handed, asking torch only when
  a CUDA device could be there (the card asks for one, or the machine has NVIDIA device
  nodes);
* :class:`PythonModel` -- the card's ``module:attr`` entry, its output validated like every
  runner's (:func:`autolabel.inference.spec.validate_output`).

A card whose own code imports torch still gets it, when its module is imported.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from autolabel.errors import BadModelOutputError, ConfigError, ModelError
from autolabel.inference.card import ModelCard
from autolabel.inference.confidence import SeriesConfidence, plugin_confidence, region_confidence
from autolabel.inference.spec import ModelSpec, validate_output
from autolabel.records import Volume

T = TypeVar("T")


def python_card_device(name: str = "auto") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as the device name a python card is built with.

    ``cpu``, and ``auto`` on a machine that can have no CUDA device (torch not installed,
    or Linux without a GPU device node: see :func:`_cuda_possible`), need no torch; otherwise
    :func:`autolabel.inference.device.resolve_device` decides (and raises
    :class:`ConfigError` as it does).
    """
    if name == "cpu":
        return "cpu"
    if name == "auto" and not _cuda_possible():
        return "cpu"
    from autolabel.inference.device import resolve_device

    return str(resolve_device(name))


def _cuda_possible(dev: str = "/dev") -> bool:
    """Whether torch may see a CUDA device here: Linux shows one as a device node in ``dev``
    (NVIDIA's ``nvidia<N>``, WSL2's ``dxg``, ROCm's ``kfd``)."""
    if importlib.util.find_spec("torch") is None:
        return False
    if sys.platform.startswith("linux"):
        return any(glob.glob(os.path.join(dev, node)) for node in ("nvidia[0-9]*", "dxg", "kfd"))
    return sys.platform != "darwin"


class PythonModel:
    """A python plug-in named by the card's ``entry``, ready to predict.

    The entry is either a function ``predict(volume) -> label map`` or a class built once
    as ``Class(card=card, device=device)`` whose instances have ``predict(volume)`` (and may
    set ``weights_sha256`` for provenance when their weights live outside the card's
    folder). Its output goes through the same validation as every other runner's;
    ``events`` stays empty (no device fallback happens here).

    Confidence (optional, one of): an instance with ``predict_probabilities(volume) ->
    (label map, probabilities (classes, *volume.shape))`` is measured by autolabel's own
    definition (:mod:`autolabel.inference.confidence`); one with ``confidence(volume,
    label_map)`` gives its own scores (:func:`~autolabel.inference.confidence.plugin_confidence`).
    Without either the plug-in gives no confidence.
    """

    _instance: Any = None

    def __init__(self, card: ModelCard, spec: ModelSpec, device: str) -> None:
        self.card = card
        self._spec = spec
        self.device = device
        self.events: list[object] = []
        target: Any = import_entry(card)
        if isinstance(target, type):
            instance: Any = run_card_code(
                card, f"building {card.entry}", lambda: target(card=card, device=device)
            )
            target = getattr(instance, "predict", None)
            digest = getattr(instance, "weights_sha256", None)
            if isinstance(digest, str):
                self._spec = card.spec(weights_sha256=digest)
            self._instance = instance
        if not callable(target):
            raise BadModelOutputError(
                f"model {spec.name!r}: entry {card.entry!r} gives no callable predict"
            )
        self._call: Callable[[Volume], object] = target

    @property
    def spec(self) -> ModelSpec:
        """The model's declaration (labels, default categories, provenance)."""
        return self._spec

    def predict(self, volume: Volume) -> npt.NDArray[np.integer]:
        """A label map of ``volume.shape`` on the volume's grid, checked against the spec.

        Raises :class:`ModelError` when the volume's modality is not the model's or the
        model fails, :class:`BadModelOutputError` when its output breaks the contract.
        """
        check_modality(self._spec, volume)
        return validate_output(self._spec, volume, self._guarded(volume, self._call))

    @property
    def gives_confidence(self) -> bool:
        """Whether the plug-in has ``predict_probabilities`` or ``confidence``."""
        return any(
            callable(getattr(self._instance, n, None))
            for n in ("predict_probabilities", "confidence")
        )

    def predict_probabilities(
        self, volume: Volume
    ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        """The plug-in's label map and class probabilities ``(classes, *volume.shape)``;
        :class:`ModelError` when it gives none."""
        own = getattr(self._instance, "predict_probabilities", None)
        if not callable(own):
            raise ModelError(
                f"model {self._spec.name!r} ({self.card.kind}) does not give class probabilities"
            )
        labels, given = self._guarded(volume, own)
        probabilities = np.asarray(given, dtype=np.float32)
        if probabilities.shape[1:] != volume.shape:
            raise BadModelOutputError(
                f"model {self._spec.name!r}: probabilities of shape {probabilities.shape} do "
                f"not cover the volume's {volume.shape}"
            )
        return validate_output(self._spec, volume, labels), probabilities

    def predict_with_confidence(
        self, volume: Volume
    ) -> tuple[npt.NDArray[np.integer], SeriesConfidence | None]:
        """The plug-in's probabilities measured, or its own scores, or no confidence."""
        if callable(getattr(self._instance, "predict_probabilities", None)):
            labels, probabilities = self.predict_probabilities(volume)
            return labels, region_confidence(labels, probabilities)
        scores = getattr(self._instance, "confidence", None)
        labels = self.predict(volume)
        if not callable(scores):
            return labels, None
        own = self._guarded(volume, lambda v: scores(v, labels))
        return labels, plugin_confidence(self._spec.name, own, labels)

    def _guarded(self, volume: Volume, call: Callable[[Volume], T]) -> T:
        return call_model(self._spec.name, volume, call)


def check_modality(spec: ModelSpec, volume: Volume) -> None:
    """Raise :class:`ModelError` when ``volume``'s modality is known and not the model's
    (every runner's first check)."""
    wanted = spec.modality
    if wanted and volume.modality and volume.modality.upper() != wanted.upper():
        raise ModelError(
            f"model {spec.name!r} expects {wanted} images, "
            f"{volume.source or 'the volume'} is {volume.modality}"
        )


def call_model(name: str, volume: Volume, call: Callable[[Volume], T]) -> T:
    """``call(volume)`` -- a model's own code on a volume -- with any failure but ours
    raised as :class:`ModelError` naming the model and the volume (every runner's rule)."""
    try:
        return call(volume)
    except (ModelError, ConfigError):
        raise
    except Exception as exc:
        raise ModelError(
            f"model {name!r} failed on {volume.source or 'a volume'}: {type(exc).__name__}: {exc}"
        ) from exc


def run_card_code(card: ModelCard, what: str, call: Callable[[], T]) -> T:
    """``call()`` -- a card's own code (or its framework's loader) run while the model loads
    -- with any failure, an ``sys.exit()`` included, raised as :class:`ConfigError` naming
    the card (a broken card is a configuration error, exit 2), never a traceback or the
    process's exit; the working folder is put back if the code changed it."""
    cwd = os.getcwd()
    try:
        return call()
    except (ModelError, ConfigError):
        raise
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"model card {card.path}: {what} failed ({type(exc).__name__}: {exc}); fix the "
            "card or the files it names"
        ) from exc
    finally:
        if os.getcwd() != cwd:  # a card that moved the working folder: relative paths hold
            os.chdir(cwd)


def import_entry(card: ModelCard) -> Any:
    """The object named by the card's ``entry`` (``module:attr``)."""
    module_name, _, attr = card.entry.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model card {card.path}: entry {card.entry!r} is not 'module:attr'")
    beside = card.folder / (module_name.replace(".", "/") + ".py")
    if beside.is_file():
        unique = f"autolabel_models.{card.name.replace('-', '_')}.{module_name}"
        module_spec = importlib.util.spec_from_file_location(unique, beside)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot import {beside}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        loader = module_spec.loader
        run_card_code(card, f"importing {beside.name}", lambda: loader.exec_module(module))
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"model card {card.path}: cannot import {module_name!r} ({exc}); put "
                f"{module_name}.py beside the card or install it"
            ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"model card {card.path}: {module_name} has no {attr!r}") from exc

"""A time limit and an exit guard around a model's ``predict``: one task's model trouble is
that task's failure, never the run's.

:class:`GuardedModel` runs each ``predict`` call on a fresh daemon thread and waits for it
at most ``timeout_s`` seconds. The contract, honestly stated:

* A model that raises ``SystemExit`` (``sys.exit()``), ``KeyboardInterrupt`` or any other
  ``BaseException`` inside ``predict`` fails that call with :class:`ModelError`; the
  process never exits because of it. (A real Ctrl-C is delivered to the main thread, which
  only waits here, so it still stops the run.)
* A call still running after ``timeout_s`` fails with :class:`ModelTimeoutError`. Python
  cannot kill a thread, so the guard first raises an exception inside it: that stops a
  model looping in Python code within ``grace_s``. A model blocked in native code (a C
  extension, a GPU kernel, a sleep) cannot be interrupted: its thread is abandoned (a
  daemon, it ends with the process and keeps its memory and CPU until then) and, when the
  model came from a card, the card is loaded again so the next tasks get a fresh instance.
  Only a separate process could reclaim that memory; autolabel does not fork per task.
* A model that changes the working folder (``os.chdir``) is put back where it was when its
  call ends, so relative paths keep their meaning.
* ``timeout_s=None`` or ``0`` waits without limit (the exit guard still applies).

The time limit comes from ``--model-timeout`` (run, watch, predict), else the card's
``[runtime] timeout_s``, else :data:`DEFAULT_TIMEOUT_S`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.errors import ModelError, ModelTimeoutError
from autolabel.inference.confidence import (
    SeriesConfidence,
    gives_confidence,
    predict_with_confidence,
)
from autolabel.inference.spec import ModelSpec, SegmentationModel
from autolabel.records import Volume

#: Seconds one ``predict`` call (one series) may take when neither flag nor card says.
DEFAULT_TIMEOUT_S = 900.0


class _Abandoned(BaseException):
    """Raised inside a predict thread that ran past its time limit."""


def _interrupt(thread: threading.Thread) -> None:
    """Raise :class:`_Abandoned` in ``thread`` at its next Python instruction (CPython)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
        )


class GuardedModel:
    """``model`` with a time limit and an exit guard on ``predict`` (module docstring).

    ``reload`` (optional) makes a fresh model after one was abandoned stuck in native code.
    Other attributes (``device``, ``events``, ``card``) are the wrapped model's.
    """

    def __init__(
        self,
        model: SegmentationModel,
        *,
        timeout_s: float | None,
        reload: Callable[[], SegmentationModel] | None = None,
        grace_s: float = 5.0,
    ) -> None:
        if timeout_s is not None and timeout_s < 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.model = model
        self.timeout_s = timeout_s or None
        self.reload = reload
        self.grace_s = grace_s
        self.abandoned = 0

    @property
    def spec(self) -> ModelSpec:
        """The wrapped model's spec."""
        return self.model.spec

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("model")
        if model is None:  # not built yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(model, name)

    @property
    def gives_confidence(self) -> bool:
        """Whether the wrapped model gives a confidence (probabilities or its own)."""
        return gives_confidence(self.model)

    def predict(self, volume: Volume) -> npt.NDArray[np.integer]:
        """The wrapped model's ``predict``, bounded in time; see the module docstring."""
        labels: npt.NDArray[np.integer] = self._bounded(volume, lambda m: m.predict(volume))
        return labels

    def predict_with_confidence(
        self, volume: Volume
    ) -> tuple[npt.NDArray[np.integer], SeriesConfidence | None]:
        """The wrapped model's label map and confidence
        (:func:`~autolabel.inference.confidence.predict_with_confidence`), bounded as
        :meth:`predict` is."""
        result: tuple[npt.NDArray[np.integer], SeriesConfidence | None] = self._bounded(
            volume, lambda m: predict_with_confidence(m, volume)
        )
        return result

    def _bounded(self, volume: Volume, call: Callable[[SegmentationModel], Any]) -> Any:
        model = self.model
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["labels"] = call(model)
            except _Abandoned:
                box["abandoned"] = True
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=run, name="autolabel-predict", daemon=True)
        cwd = os.getcwd()
        thread.start()
        try:
            _wait(thread, self.timeout_s)
        finally:
            _restore_cwd(cwd)
        where = f"model {model.spec.name!r} on {volume.source or 'a volume'}"
        if thread.is_alive():
            _interrupt(thread)
            thread.join(self.grace_s)
            stuck = thread.is_alive()
            if stuck:
                self.abandoned += 1
                if self.reload is not None:
                    self.model = self.reload()
            raise ModelTimeoutError(
                f"{where}: ran past its time limit of {self.timeout_s:g} s and was "
                f"{'abandoned (stuck in native code; the model was loaded again)' if stuck else 'stopped'}"
                ". Raise the limit with --model-timeout SECONDS or [runtime] timeout_s in the "
                "model card, or check the model on this image with autolabel predict."
            )
        error = box.get("error")
        if isinstance(error, SystemExit):
            raise ModelError(
                f"{where}: the model called sys.exit({error.code!r}); a model must return a "
                "label map or raise an exception. This task failed, the run goes on."
            ) from error
        if isinstance(error, BaseException) and not isinstance(error, Exception):
            raise ModelError(
                f"{where}: the model raised {type(error).__name__} inside predict; this task "
                "failed, the run goes on."
            ) from error
        if error is not None:
            raise error
        return box["labels"]


def _restore_cwd(cwd: str) -> None:
    """Put the process back in ``cwd`` if the model moved it (``os.chdir``): the run's relative
    paths (work folder, ``--out``) must keep meaning what the user gave."""
    if os.getcwd() != cwd:
        os.chdir(cwd)


def _wait(thread: threading.Thread, timeout_s: float | None) -> None:
    """Join ``thread`` (in short slices, so signals reach the main thread promptly)."""
    if timeout_s is None:
        while thread.is_alive():
            thread.join(1.0)
        return
    thread.join(timeout_s)


def guard_model(model: SegmentationModel, timeout_s: float | None = None) -> GuardedModel:
    """``model`` behind a :class:`GuardedModel`; the limit is ``timeout_s`` if given, else the
    card's ``[runtime] timeout_s``, else :data:`DEFAULT_TIMEOUT_S`. A model loaded from a
    card is reloaded from it after being abandoned."""
    if isinstance(model, GuardedModel):
        return model
    card = getattr(model, "card", None)
    card_timeout = getattr(card, "timeout_s", None)
    limit = timeout_s if timeout_s is not None else card_timeout
    reload = None
    if card is not None and hasattr(card, "path"):
        device, autocast = str(getattr(model, "device", "cpu")), getattr(model, "autocast", None)

        def reload() -> SegmentationModel:
            from autolabel.inference import load_model

            return load_model(card.path, device=device, autocast=autocast)

    return GuardedModel(
        model, timeout_s=DEFAULT_TIMEOUT_S if limit is None else limit, reload=reload
    )

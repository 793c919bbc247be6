"""How sure a model is of each label it predicted: :func:`region_confidence`.

The one definition autolabel uses (``docs`` and the report say the same):

* **confidence** of a label id ``c`` in one series = the mean, over the voxels the label
  map assigns to ``c``, of the model's probability of ``c`` there. Where the label is the
  argmax (everywhere, unless postprocessing changed a voxel) that is the *max-softmax
  probability*: 1.0 means the model gave that class all of its probability in every voxel
  of the region;
* **entropy** beside it = the mean, over the same voxels, of the Shannon entropy of the
  voxel's class distribution divided by ``ln(classes)`` (0: certain, 1: uniform);
* a label the map does not contain has no region, hence no confidence (it is absent).
* a TorchScript card measures it on the model's own grid (the region its argmax gives
  there, before postprocessing): the probabilities are never resampled, and the label map
  written is exactly :meth:`~autolabel.inference.runners.LoadedModel.predict`'s;

A model without probabilities (``ct-threshold``, the default, and most python plug-ins)
gives **no** confidence: ``None``, never a made-up number. A python plug-in may give its
own scores instead (:func:`plugin_confidence`: the contract is in its docstring).
numpy only: the runners hand over the probabilities (:meth:`LoadedModel.predict_probabilities`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.errors import BadModelOutputError

#: Voxels along the first axis handled at once (bounds the float temporaries).
_SLAB = 16


@dataclass(frozen=True, slots=True)
class LabelConfidence:
    """The confidence of one predicted label in one series (see the module docstring).

    ``entropy`` is None when the model gave scores rather than probabilities;
    ``voxels`` is the size of the region averaged over (0 for a plug-in's own score).
    """

    confidence: float
    entropy: float | None
    voxels: int


#: Confidence of each label id present in one series' label map.
SeriesConfidence = dict[int, LabelConfidence]


def region_confidence(
    labels: npt.NDArray[np.integer], probabilities: npt.NDArray[np.floating]
) -> SeriesConfidence:
    """The confidence and entropy of each non-zero label id present in ``labels``.

    ``probabilities`` is ``(classes, *labels.shape)``; class ``c`` is label id ``c``.
    Raises :class:`BadModelOutputError` when the shapes disagree, a label id has no
    probability channel, or a probability is not a finite number in ``[0, 1]`` (NaN, or
    logits not passed through a softmax: a NaN would pass every threshold unnoticed).

    >>> labels = np.array([[[0, 1], [1, 1]]])
    >>> p1 = np.array([[[0.2, 0.9], [0.6, 0.9]]])
    >>> result = region_confidence(labels, np.stack([1 - p1, p1]))
    >>> round(result[1].confidence, 3), result[1].voxels
    (0.8, 3)
    """
    classes = int(probabilities.shape[0])
    if probabilities.shape[1:] != labels.shape:
        raise BadModelOutputError(
            f"probabilities of shape {probabilities.shape} do not match labels {labels.shape}"
        )
    if labels.size and int(labels.max()) >= classes:
        raise BadModelOutputError(
            f"label id {int(labels.max())} has no probability channel (only {classes})"
        )
    picked_sum = np.zeros(classes, dtype=np.float64)
    entropy_sum = np.zeros(classes, dtype=np.float64)
    counts = np.zeros(classes, dtype=np.int64)
    scale = math.log(classes) if classes > 1 else 1.0
    for start in range(0, labels.shape[0] if labels.ndim else 1, _SLAB):
        lab = np.asarray(labels[start : start + _SLAB]).reshape(-1).astype(np.intp)
        p = np.asarray(probabilities[:, start : start + _SLAB], dtype=np.float32)
        p = p.reshape(classes, -1)
        _check_probabilities(p)
        picked = p[lab, np.arange(lab.size)]
        entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(0) / scale
        picked_sum += np.bincount(lab, weights=picked, minlength=classes)
        entropy_sum += np.bincount(lab, weights=entropy, minlength=classes)
        counts += np.bincount(lab, minlength=classes)
    return {
        c: LabelConfidence(
            min(1.0, max(0.0, float(picked_sum[c] / counts[c]))),
            min(1.0, max(0.0, float(entropy_sum[c] / counts[c]))),
            int(counts[c]),
        )
        for c in range(1, classes)
        if counts[c]
    }


#: How far a probability may stray outside ``[0, 1]`` by float rounding.
_ROUNDING = 1e-3


def _check_probabilities(p: npt.NDArray[np.floating]) -> None:
    """:class:`BadModelOutputError` unless every value of ``p`` is finite and in ``[0, 1]``."""
    if p.size == 0:
        return
    low, high = float(p.min()), float(p.max())  # NaN propagates through min/max
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadModelOutputError(
            "class probabilities contain NaN or infinity; give finite probabilities in [0, 1]"
        )
    if low < -_ROUNDING or high > 1 + _ROUNDING:
        raise BadModelOutputError(
            f"class probabilities must lie in [0, 1], found {low:g} to {high:g} (logits? "
            "pass them through a softmax first)"
        )


def plugin_confidence(
    name: str, scores: object, labels: npt.NDArray[np.integer]
) -> SeriesConfidence:
    """A python plug-in's own confidence, checked.

    The contract: a plug-in class may define ``confidence(volume, label_map)`` (called
    after its ``predict``, with the label map it returned) returning a mapping of label id
    to either a score in ``[0, 1]`` or ``{"confidence": score, "entropy": e}`` (``e`` in
    ``[0, 1]`` or absent); numpy ids and numbers count. Ids the label map does not contain
    are ignored; every id it contains needs a score (one left out -- scores keyed off by
    one, say -- would go unjudged by ``--finalize-above``). Anything else raises
    :class:`BadModelOutputError` naming the model.
    """
    if not isinstance(scores, Mapping):
        raise BadModelOutputError(
            f"model {name!r}: confidence() returned {type(scores).__name__}, not a mapping of "
            "label id to a score in [0, 1]"
        )
    present = {int(v) for v in np.unique(labels)} - {0}
    out: SeriesConfidence = {}
    for key, value in scores.items():
        if not isinstance(key, numbers.Integral) or isinstance(key, bool | np.bool_):
            raise BadModelOutputError(f"model {name!r}: confidence key {key!r} is not a label id")
        key = int(key)  # numpy ids (np.unique of the label map) are label ids too
        if key not in present:
            continue
        raw: Any = value.get("confidence") if isinstance(value, Mapping) else value
        entropy: Any = value.get("entropy") if isinstance(value, Mapping) else None
        out[key] = LabelConfidence(
            _unit(name, raw, "confidence"),
            None if entropy is None else _unit(name, entropy, "entropy"),
            0,
        )
    unscored = sorted(present - set(out))
    if unscored:
        raise BadModelOutputError(
            f"model {name!r}: confidence() gave no score for label id {unscored[0]}, which its "
            f"label map contains (scored: {sorted(out) or 'none'}); score every predicted label"
        )
    return out


def _unit(name: str, value: Any, what: str) -> float:
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, numbers.Real)
        or not -_ROUNDING <= float(value) <= 1 + _ROUNDING  # NaN fails this too
    ):
        raise BadModelOutputError(f"model {name!r}: {what} {value!r} is not a number in [0, 1]")
    return min(1.0, max(0.0, float(value)))  # a float32 mean may stray past 1 by rounding


def gives_confidence(model: object) -> bool:
    """Whether ``model`` gives a confidence (probabilities, or a plug-in's own scores)."""
    flag = getattr(model, "gives_confidence", None)
    if isinstance(flag, bool):
        return flag
    return callable(getattr(model, "predict_probabilities", None))


def predict_with_confidence(
    model: Any, volume: Any
) -> tuple[npt.NDArray[np.integer], SeriesConfidence | None]:
    """``model``'s label map of ``volume`` and its confidence (None: the model gives none).

    A loaded model answers itself (:meth:`LoadedModel.predict_with_confidence`); any other
    object with ``predict_probabilities(volume) -> (labels, probabilities)`` is measured
    by :func:`region_confidence`; one with only ``predict`` gives no confidence.
    """
    own = getattr(model, "predict_with_confidence", None)
    if callable(own):
        labels, confidence = own(volume)
        return labels, confidence
    if gives_confidence(model):
        labels, probabilities = model.predict_probabilities(volume)
        return labels, region_confidence(labels, probabilities)
    return model.predict(volume), None

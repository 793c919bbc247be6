"""Routing by confidence: which categories a task keeps, whether it is submitted or saved
as a draft, and the RedBrick priority of a draft. Pure functions: the local run and the Ray
actors call the same ones, and :class:`~autolabel.pipeline.flow.TaskFlow` decides the route
through :func:`decide_route` (the only place a route is decided).

* :func:`task_confidence` -- the confidence of each taxonomy category of a task: the
  model's per-label confidence (:mod:`autolabel.inference.confidence`) averaged over the
  task's series and the model labels mapped to the category, weighted by voxels; ``None``
  when the model gives no probabilities.
* ``--drop-below T`` (:func:`dropped_categories`): a category whose confidence is below its
  threshold is left out of the labels written (a person labels it).
* ``--finalize-above T`` (:func:`decide_route`): a task whose *every* predicted category
  reaches its threshold, none dropped, is submitted; any other is saved as a draft, with
  the reason. A category the model found nowhere in the task is not judged.
* ``--prioritize`` (:func:`draft_priority`): a draft's RedBrick priority is
  ``1 - (its least confident category's confidence)``: the least sure first.

A threshold is one number for every category, or per category (:class:`Thresholds`, read
by :func:`load_thresholds` from TOML or JSON ``{category: T}``; the key ``"*"`` sets the
threshold of categories not named).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import ConfigError
from autolabel.inference.confidence import SeriesConfidence
from autolabel.redbrick.types import category_attributes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The name of the taxonomy attribute that receives each label's confidence (NUMBER or TEXT).
CONFIDENCE_ATTRIBUTE = "Confidence"
#: Routes a task can take.
FINALIZE, DRAFT = "finalize", "draft"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A confidence threshold per category: ``per_category`` over ``default``.

    ``of(category)`` is None for a category with no threshold (no default and not named).
    """

    default: float | None = None
    per_category: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in [("*", self.default), *self.per_category.items()]:
            if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
                raise ConfigError(
                    f"confidence threshold for {name!r} must be a number in [0, 1], got {value!r}"
                )

    def of(self, category: str) -> float | None:
        """The threshold of ``category`` (None: none applies)."""
        return self.per_category.get(category, self.default)

    def to_json(self) -> dict[str, float]:
        """The thresholds as ``{category: T}`` (``"*"`` for the default)."""
        out = {} if self.default is None else {"*": self.default}
        return {**out, **self.per_category}


def thresholds(value: object, source: str) -> Thresholds | None:
    """``value`` (a number, a ``{category: T}`` mapping, a :class:`Thresholds` or None) as
    :class:`Thresholds`; :class:`ConfigError` naming ``source`` otherwise (a boolean is no
    threshold: ``true`` is refused, not read as 1)."""
    if value is None or isinstance(value, Thresholds):
        return value
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Thresholds(float(value))
        if isinstance(value, Mapping) and not any(isinstance(v, bool) for v in value.values()):
            default = value.get("*")
            named = {str(k): float(v) for k, v in value.items() if k != "*"}
            return Thresholds(None if default is None else float(default), named)
    except (TypeError, ValueError):
        pass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    raise ConfigError(
        f"{source}: a confidence threshold is a number in [0, 1] or a table of category = "
        f"number, got {value!r}"
    )


def load_thresholds(text: str, source: str) -> Thresholds:
    """A flag's value: a number (``0.9``) or a TOML/JSON file of ``{category: T}``."""
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        found = thresholds(number, f"{source} {text}")
        assert found is not None
        return found
    path = Path(text)
    try:
        raw = path.read_text(encoding="utf-8")
        data = tomllib.loads(raw) if path.suffix.lower() == ".toml" else json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{source} {text!r}: not a number, and cannot read it as a TOML/JSON file of "
            f"category = threshold ({exc})"
        ) from exc
    found = thresholds(data, f"{source} {path}")
    assert found is not None
    return found


def check_categories(limits: Thresholds | None, known: Sequence[str], source: str) -> None:
    """Refuse thresholds for categories the run cannot write (a typo is never silent)."""
    unknown = sorted(set(limits.per_category) - set(known)) if limits else []
    if unknown:
        raise ConfigError(
            f"{source}: {unknown} are not categories this model writes; known: {sorted(known)}"
        )


def intent_finalizes(detail: Mapping[str, Any], mode: str) -> bool:
    """Whether a recorded ``writing`` intent was a submit: its ``finalize`` (the route), or
    for a ledger older than routing its run's mode."""
    return bool(detail.get("finalize", mode == "final"))


def task_confidence(
    series: Sequence[SeriesConfidence | None], category_of: Mapping[int, str]
) -> dict[str, dict[str, Any]] | None:
    """``{category: {"confidence", "entropy", "voxels"}}`` over a task's series, or None when
    the model gave no confidence. ``category_of`` maps a model label id to its category
    (ids mapped to none are left out). Means are weighted by voxels (equally for a
    plug-in's own scores, which have none); entropy is None if some part lacks it."""
    if not series or any(s is None for s in series):
        return None
    sums: dict[str, list[float]] = {}
    for found in series:
        for label_id, c in (found or {}).items():
            category = category_of.get(label_id)
            if category is None:
                continue
            weight = float(c.voxels or 1)
            acc = sums.setdefault(category, [0.0, 0.0, 0.0, 0.0, 0.0])
            acc[0] += weight * c.confidence
            acc[1] += weight * (c.entropy if c.entropy is not None else 0.0)
            acc[2] += weight
            acc[3] += c.voxels
            acc[4] += 1.0 if c.entropy is None else 0.0
    return {
        category: {
            "confidence": round(acc[0] / acc[2], 4),
            "entropy": None if acc[4] else round(acc[1] / acc[2], 4),
            "voxels": int(acc[3]),
        }
        for category, acc in sorted(sums.items())
    }


def dropped_categories(
    confidence: Mapping[str, Mapping[str, Any]] | None, limits: Thresholds | None
) -> list[str]:
    """The categories below their ``--drop-below`` threshold (none without confidence)."""
    if confidence is None or limits is None:
        return []
    return sorted(
        c
        for c, v in confidence.items()
        if (t := limits.of(c)) is not None and not float(v["confidence"]) >= t  # NaN: below
    )


def all_dropped_reason(
    dropped: Sequence[str], confidence: Mapping[str, Mapping[str, Any]] | None
) -> str:
    """Why a task is skipped when ``--drop-below`` left out everything the model found."""
    shown = ", ".join(
        f"{c} {float((confidence or {}).get(c, {}).get('confidence', float('nan'))):.3f}"
        for c in dropped
    )
    return (
        f"every category the model found is below --drop-below ({shown}): nothing written, "
        "the task is left for a person to label"
    )


@dataclass(frozen=True, slots=True)
class Route:
    """How a task's write goes: ``finalize`` (submit) or not, and why.

    ``name`` is ``finalize`` or ``draft`` when the run routes by confidence, ``""`` when
    the run's mode alone decides.
    """

    finalize: bool
    name: str = ""
    reason: str = ""


def decide_route(
    mode_finalizes: bool,
    confidence: Mapping[str, Mapping[str, Any]] | None,
    limits: Thresholds | None,
    dropped: Sequence[str] = (),
) -> Route:
    """The route of a task (see the module docstring): the mode's, or with ``limits``
    (``--finalize-above``) submitted only when every predicted category reaches its
    threshold and none was ``dropped`` by ``--drop-below`` (whatever the two thresholds:
    a task written without a category it has is left for a person, never submitted)."""
    if limits is None and not (mode_finalizes and dropped):
        return Route(mode_finalizes)
    if limits is None:  # --finalize: a task missing a dropped category is not submitted
        reason = "; ".join(f"{c} left out by --drop-below" for c in dropped)
        return Route(False, DRAFT, f"not submitted: {reason}, for a person to draw")
    if confidence is None:
        return Route(False, DRAFT, "no probabilities: the model gives no confidence")
    if not confidence:
        return Route(False, DRAFT, "no category predicted: nothing to judge")
    short = [f"{category} left out by --drop-below" for category in dropped]
    for category, value in confidence.items():
        t, c = limits.of(category), float(value["confidence"])
        if t is None:
            short.append(f"{category}: no threshold")
        elif not c >= t:  # a NaN never reaches a threshold
            short.append(f"{category} {c:.3f} < {t:g}")
    if short:
        return Route(False, DRAFT, "below --finalize-above: " + "; ".join(short))
    return Route(True, FINALIZE, "")


def draft_priority(confidence: Mapping[str, Mapping[str, Any]] | None) -> float | None:
    """A draft's RedBrick priority in ``[0, 1]``: 1 minus its least confident category's
    confidence (None when there is no confidence)."""
    if not confidence:
        return None
    lowest = min(float(v["confidence"]) for v in confidence.values())
    return round(min(1.0, max(0.0, 1.0 - lowest)), 4) if math.isfinite(lowest) else None


def with_confidence_attribute(
    entries: Sequence[Mapping[str, Any]],
    confidence: Mapping[str, Mapping[str, Any]] | None,
    taxonomy: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """``entries`` with each segment's confidence in its :data:`CONFIDENCE_ATTRIBUTE`
    attribute, where the taxonomy gives the segment's category one (a NUMBER gets the
    number, a TEXT the number as text with 3 decimals; other types are left alone)."""
    kinds = {
        category: names[CONFIDENCE_ATTRIBUTE]
        for category, names in category_attributes(taxonomy).items()
        if CONFIDENCE_ATTRIBUTE in names
    }
    out = [dict(e) for e in entries]
    if not confidence or not kinds:
        return out
    for entry in out:
        segments = dict(entry.get("segmentMap") or {})
        for key, spec in segments.items():
            spec = dict(spec) if isinstance(spec, Mapping) else {"category": spec}
            category = str(spec.get("category"))
            value = confidence.get(category, {}).get("confidence")
            kind = kinds.get(category)
            if value is None or kind not in ("NUMBER", "TEXT"):
                continue
            shown: float | str = float(value) if kind == "NUMBER" else f"{float(value):.3f}"
            spec["attributes"] = {**(spec.get("attributes") or {}), CONFIDENCE_ATTRIBUTE: shown}
            segments[key] = spec
        if segments:
            entry["segmentMap"] = segments
    return out

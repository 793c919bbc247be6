"""Model cards: ``models/<name>/model.toml`` declares a model, its runner and its pipeline.

No torch here, so ``autolabel models`` and the pipeline's planning stay light.

A card (all keys but ``name``, ``kind`` and ``[labels]`` are optional; a ``totalsegmentator``
card may leave ``[labels]`` out to take its task's class map)::

    name = "phantom-unet"
    version = "1.0.0"
    kind = "torchscript"          # python | torchscript | nnunet | totalsegmentator | monai-bundle
    description = "..."
    modality = "CT"               # "" accepts any modality
    expected_input = "..."
    weights = "model.pt"          # relative to the card's folder
    entry = "plugin:Model"        # python kind: module (file beside the card, or importable):attr
    requires = ["deepbet"]        # importable modules the model needs
    extra = "deepbet"             # the autolabel extra that installs them

    [labels]                      # model label id -> name (0 is background)
    1 = "liver"
    [categories]                  # default mapping: model label id -> taxonomy category
    1 = "Liver"

    [preprocess]
    orientation = "LPS"           # reorient to these axis codes first ("" keeps the native grid)
    spacing = [5.0, 5.0, 5.0]     # resample to this spacing (mm) and back ([] keeps it)
    intensity = "window"          # window | zscore | none
    window = [-1000.0, 400.0]     # window: clip, then scale to [0, 1]
    clip_percentiles = [0.5, 99.5]  # zscore: clip to these percentiles first

    [sliding_window]
    patch = [64, 64, 48]
    overlap = 0.25
    blend = "gaussian"            # gaussian | constant
    sigma_scale = 0.125           # Gaussian sigma as a fraction of the patch size
    batch = 2                     # windows per forward pass

    [postprocess]
    largest_component = [1, 2]    # label ids (or true for all) reduced to their largest component
    fill_holes = [1, 2]
    min_size_mm3 = 0.0            # drop connected components smaller than this

    [runtime]
    autocast = "auto"             # auto (bf16 on CPU when supported, fp16 on CUDA) | bf16 | fp16 | off
    timeout_s = 900               # seconds one predict call may take (--model-timeout overrides)

    [options]                     # runner-specific settings (nnU-Net folds, TotalSegmentator task, ...)
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import BadModelOutputError, ConfigError
from autolabel.inference.spec import ModelSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CARD_FILE = "model.toml"
KINDS = ("python", "torchscript", "nnunet", "totalsegmentator", "monai-bundle")
#: Environment variable: extra folders of model cards, searched before the repository's.
MODELS_ENV = "AUTOLABEL_MODELS"
_INTENSITY = ("window", "zscore", "none")
_AUTOCAST = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a volume is brought to the model's grid and intensity range."""

    orientation: str = ""
    spacing: tuple[float, float, float] | None = None
    intensity: str = "none"
    window: tuple[float, float] = (-1000.0, 1000.0)
    clip_percentiles: tuple[float, float] | None = None


@dataclass(frozen=True, kw_only=True)
class SlidingWindow:
    """Sliding-window settings; ``patch`` None runs the whole volume in one pass."""

    patch: tuple[int, int, int] | None = None
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch: int = 1


@dataclass(frozen=True, kw_only=True)
class Postprocessing:
    """Label-map clean-up; a label set of None means "every label"."""

    largest_component: frozenset[int] = frozenset()
    fill_holes: frozenset[int] = frozenset()
    min_size_mm3: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """A parsed ``model.toml``; ``folder`` is where it lives (weights and code beside it)."""

    path: Path
    name: str
    version: str
    kind: str
    labels: Mapping[int, str]
    categories: Mapping[int, str]
    description: str = ""
    modality: str = ""
    expected_input: str = ""
    weights: Path | None = None
    entry: str = ""
    requires: tuple[str, ...] = ()
    extra: str = ""
    preprocess: Preprocessing = field(default_factory=Preprocessing)
    sliding_window: SlidingWindow = field(default_factory=SlidingWindow)
    postprocess: Postprocessing = field(default_factory=Postprocessing)
    autocast: str = "auto"
    timeout_s: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The card's folder."""
        return self.path.parent

    def spec(self, *, weights_sha256: str | None = None) -> ModelSpec:
        """The :class:`ModelSpec` this card declares (hashing the weights unless given)."""
        digest = weights_sha256
        if digest is None:
            digest = sha256_file(self.weights) if self.weights and self.weights.is_file() else ""
        try:
            return ModelSpec(
                name=self.name,
                version=self.version,
                labels=self.labels,
                categories=self.categories,
                modality=self.modality,
                expected_input=self.expected_input,
                weights_sha256=digest,
            )
        except BadModelOutputError as exc:
            raise ConfigError(f"model card {self.path}: {exc}") from exc

    def availability(self) -> tuple[bool, str]:
        """Whether the model can be loaded here, and if not, why (without importing it)."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f"pip install 'autolabel[{self.extra}]'" if self.extra else "install them"
            return False, f"needs {', '.join(missing)} ({hint})"
        if self.weights is not None and not self.weights.exists():
            return False, f"weights not found: {self.weights}"
        return True, "ok"


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def models_dirs() -> list[Path]:
    """Folders searched for cards by name: ``$AUTOLABEL_MODELS`` (os.pathsep-separated),
    then the ``models/`` folder of the repository checkout this package runs from."""
    dirs = [Path(p) for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    return [d for d in dirs if d.is_dir()]


def find_card(name_or_path: str | os.PathLike[str]) -> Path:
    """The ``model.toml`` for a model name, a card folder or a card file.

    Raises :class:`ConfigError` listing the known names when nothing matches.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    if (candidate / CARD_FILE).is_file():
        return candidate / CARD_FILE
    name = str(name_or_path)
    if "/" not in name and os.sep not in name:
        for folder in models_dirs():
            if (folder / name / CARD_FILE).is_file():
                return folder / name / CARD_FILE
    known = sorted({p.parent.name for d in models_dirs() for p in d.glob(f"*/{CARD_FILE}")})
    raise ConfigError(
        f"no model card {name!r}: not a card path, and not among the models in "
        f"{', '.join(map(str, models_dirs())) or '(no models folder)'}: {', '.join(known) or 'none'}"
        f" (set {MODELS_ENV} to add a folder)"
    )


def list_cards() -> list[ModelCard]:
    """Every readable card found in :func:`models_dirs`, the first of each name, by name
    (broken cards are left out; :func:`scan_cards` reports them)."""
    return scan_cards()[0]


def scan_cards() -> tuple[list[ModelCard], list[tuple[Path, ConfigError]]]:
    """The readable cards (as :func:`list_cards`) and each broken card with its error.

    One broken card never hides the others.
    """
    cards: dict[str, ModelCard] = {}
    broken: list[tuple[Path, ConfigError]] = []
    for folder in models_dirs():
        for path in sorted(folder.glob(f"*/{CARD_FILE}")):
            try:
                card = read_card(path)
            except ConfigError as exc:
                broken.append((path, exc))
                continue
            cards.setdefault(card.name, card)
    return [cards[name] for name in sorted(cards)], broken


def read_card(path: Path) -> ModelCard:
    """Parse and check one ``model.toml``; any mistake raises :class:`ConfigError`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model card {path}: {exc}") from exc
    try:
        card = _build(path, raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model card {path}: {exc}") from exc
    if card.labels or card.kind != "totalsegmentator":
        card.spec(weights_sha256="")  # validates labels and categories
    return card


#: Every top-level key a card may have; anything else is a typo.
_KEYS = (
    "name", "version", "kind", "description", "modality", "expected_input", "weights", "entry",
    "requires", "extra", "labels", "categories", "preprocess", "sliding_window", "postprocess",
    "runtime", "options",
)  # fmt: skip
_REQUIRED = {
    "name": 'name = "my-model"',
    "kind": f"kind = one of {', '.join(KINDS)}",
    "labels": '[labels] table of model label id -> name, e.g. 1 = "liver"',
}


def _check_keys(raw: Mapping[str, Any]) -> None:
    """Refuse unknown keys (suggesting the near miss) and name any missing required key."""
    unknown = [key for key in raw if key not in _KEYS]
    problems = []
    for key in unknown:
        near = difflib.get_close_matches(key, _KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else f" (known keys: {', '.join(_KEYS)})"
        problems.append(f"unknown key {key!r}{hint}")
    for key, example in _REQUIRED.items():
        # A TotalSegmentator card may leave [labels] out: the runner takes its class map.
        if key == "labels" and raw.get("kind") == "totalsegmentator":
            continue
        if key not in raw:
            problems.append(f"missing required {key!r} ({example})")
    if problems:
        raise ValueError("; ".join(problems))


def _ids(table: Mapping[str, Any], what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, value in table.items():
        if not isinstance(value, str):
            raise TypeError(f"[{what}] {key} must be a string, got {value!r}")
        out[int(key)] = value
    return out


def _label_set(value: Any, labels: Mapping[int, str], what: str) -> frozenset[int]:
    if value is True:
        return frozenset(labels)
    if value is False:
        return frozenset()
    ids = frozenset(int(v) for v in value)
    if not ids <= set(labels):
        raise ValueError(
            f"postprocess.{what} names labels {sorted(ids - set(labels))} not in [labels]"
        )
    return ids


def _triple(value: Any, cast: type[float] | type[int], what: str) -> Any:
    items = tuple(cast(v) for v in value)
    if len(items) != 3 or min(items) <= 0:
        raise ValueError(f"{what} must be three positive numbers, got {value!r}")
    return items


def _build(path: Path, raw: dict[str, Any]) -> ModelCard:
    _check_keys(raw)
    table = raw.get("labels", {})
    if not isinstance(table, dict):
        raise TypeError(f"labels must be a table ([labels]), got {table!r}")
    kind = str(raw["kind"])
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    labels = _ids(table, "labels")
    pre = raw.get("preprocess", {})
    win = raw.get("sliding_window", {})
    post = raw.get("postprocess", {})
    runtime = raw.get("runtime", {})
    intensity = str(pre.get("intensity", "none"))
    autocast = str(runtime.get("autocast", "auto"))
    blend = str(win.get("blend", "gaussian"))
    if intensity not in _INTENSITY:
        raise ValueError(f"preprocess.intensity {intensity!r} is not one of {_INTENSITY}")
    if autocast not in _AUTOCAST:
        raise ValueError(f"runtime.autocast {autocast!r} is not one of {_AUTOCAST}")
    timeout = runtime.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or float(timeout) <= 0):
        raise ValueError(f"runtime.timeout_s must be a positive number of seconds, got {timeout!r}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"sliding_window.blend {blend!r} is not gaussian or constant")
    overlap = float(win.get("overlap", 0.25))
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window.overlap must be in [0, 1), got {overlap}")
    window = tuple(float(v) for v in pre.get("window", (-1000.0, 1000.0)))
    if len(window) != 2 or window[0] >= window[1]:
        raise ValueError(f"preprocess.window must be [low, high] with low < high, got {window}")
    percentiles = pre.get("clip_percentiles")
    orientation = str(pre.get("orientation", "")).upper()
    if orientation and sorted(orientation.translate(str.maketrans("RAS", "LPI"))) != [
        "I",
        "L",
        "P",
    ]:
        raise ValueError(f"preprocess.orientation {orientation!r} is not three axis codes like LPS")
    weights = raw.get("weights")
    return ModelCard(
        path=path.resolve(),
        name=str(raw["name"]),
        version=str(raw.get("version", "0")),
        kind=kind,
        labels=labels,
        categories=_ids(raw.get("categories", {}), "categories"),
        description=str(raw.get("description", "")),
        modality=str(raw.get("modality", "")),
        expected_input=str(raw.get("expected_input", "")),
        weights=(path.parent / str(weights)).resolve() if weights else None,
        entry=str(raw.get("entry", "")),
        requires=tuple(str(m) for m in raw.get("requires", ())),
        extra=str(raw.get("extra", "")),
        preprocess=Preprocessing(
            orientation=orientation,
            spacing=_triple(pre["spacing"], float, "preprocess.spacing")
            if pre.get("spacing")
            else None,
            intensity=intensity,
            window=(window[0], window[1]),
            clip_percentiles=(float(percentiles[0]), float(percentiles[1]))
            if percentiles
            else None,
        ),
        sliding_window=SlidingWindow(
            patch=_triple(win["patch"], int, "sliding_window.patch") if win.get("patch") else None,
            overlap=overlap,
            blend=blend,
            sigma_scale=float(win.get("sigma_scale", 0.125)),
            batch=max(1, int(win.get("batch", 1))),
        ),
        postprocess=Postprocessing(
            largest_component=_label_set(
                post.get("largest_component", ()), labels, "largest_component"
            ),
            fill_holes=_label_set(post.get("fill_holes", ()), labels, "fill_holes"),
            min_size_mm3=float(post.get("min_size_mm3", 0.0)),
        ),
        autocast=autocast,
        timeout_s=float(timeout) if timeout is not None else None,
        options=dict(raw.get("options", {})),
    )

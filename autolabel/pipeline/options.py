"""What a run is asked to do: :class:`RunOptions`, and :func:`resolve_options`, the one rule
for where each option comes from.

Each option is taken from the first source that has it: the command-line flags (or the
keyword arguments of :func:`autolabel.run`), then the ``[run]`` table of ``autolabel.toml``
(the file given with ``--config``, else the one in the current folder; the options it may set
are :data:`FILE_OPTIONS`), then the defaults of :class:`RunOptions`. The command line, the
Python API, ``watch`` and ``review`` all resolve their options here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolabel import convert
from autolabel.errors import ConfigError
from autolabel.imaging.checks import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS
from autolabel.ledger import MODES, Mode
from autolabel.pipeline.routing import Thresholds, thresholds
from autolabel.settings import DEFAULT_WORK_DIR, load_config

#: The model a run uses when none is named: classical CT thresholds (body, lungs, bone).
DEFAULT_MODEL = "ct-threshold"
#: Why ``empty = "flag"`` is refused: it only wrote series ``metaData``, which no RedBrick
#: user sees (the viewer shows labels, comments and classifications).
EMPTY_FLAG_REMOVED = (
    'empty = "flag" was removed: RedBrick shows that note to nobody. Use "submit" to save '
    'empty labels a person reviews, or "skip" (the default) and find the tasks with '
    "`autolabel status` (skipped: the model found nothing)"
)
#: The options the ``[run]`` table of ``autolabel.toml`` may set.
FILE_OPTIONS = (
    "stage", "model", "device", "mode", "work_dir", "out_dir", "limit", "force",
    "fetch_workers", "write_workers", "queue_depth", "finalize_above", "drop_below",
    "prioritize",
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a run does (see :func:`autolabel.pipeline.run`); :func:`resolve_options` builds
    one from flags, ``autolabel.toml`` and these defaults.

    ``model`` is the card name or path a run loads (:data:`DEFAULT_MODEL`) on ``device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``). ``mode`` (a :class:`~autolabel.ledger.Mode`) is ``draft`` (the default: save drafts), ``final`` (submit) or ``dry-run``
    (write nothing to RedBrick; keep label files, payloads and previews in ``out_dir``).
    ``task_ids`` / ``name`` pick tasks instead of all assigned ones; ``limit`` caps them.
    ``mapping`` maps model label names to taxonomy categories (``None`` drops a class) on
    top of the model card's default mapping. ``empty`` is the policy for a task whose
    prediction is empty: ``skip`` it or ``submit`` it empty (see :data:`EMPTY_FLAG_REMOVED`).
    ``work_dir`` holds the ledger and temporary downloads; ``out_dir`` (default
    ``work_dir/results``) the per-task results, one folder per task id. ``model_timeout_s`` bounds each predict
    call (None: the card's ``[runtime] timeout_s``, else 900 s; see
    :mod:`autolabel.inference.guard`); ``max_voxels`` / ``max_image_bytes`` bound each
    series before it is decoded (:class:`autolabel.imaging.ImageLimits`).

    ``lock_wait_s`` is how long to wait for another run holding the work folder's lock
    (:mod:`autolabel.pipeline.lock`): 0 (default) not at all, ``None`` as long as it takes.
    ``settle_window_s`` is how long a write whose reply was lost may still land on
    RedBrick (:func:`autolabel.pipeline.submit.settle_window`); ``None`` derives it from the
    client's read timeout.

    Routing by confidence (:mod:`autolabel.pipeline.routing`; each needs a model that gives
    probabilities): ``finalize_above`` (a number or ``{category: T}``) submits a task whose
    every predicted category reaches its threshold and saves the others as drafts (only in
    ``draft`` or ``dry-run`` mode); ``drop_below`` leaves out a category below its
    threshold; ``prioritize`` gives each draft the RedBrick priority ``1 - confidence`` of
    its least sure category, so labelers open the hardest first.
    """

    stage: str = "Label"
    model: str = DEFAULT_MODEL
    device: str = "auto"
    mode: str = Mode.DRAFT
    task_ids: tuple[str, ...] = ()
    name: str | None = None
    limit: int | None = None
    force: bool = False
    work_dir: Path = Path(DEFAULT_WORK_DIR)
    out_dir: Path | None = None
    mapping: Mapping[str | int, convert.Target] | None = None
    allow_unmapped: bool = False
    empty: convert.EmptyPolicy = "skip"
    instances: bool = False
    min_component_voxels: int = 0
    previews: bool = True
    fetch_workers: int = 4
    write_workers: int = 2
    queue_depth: int = 2
    model_timeout_s: float | None = None
    max_voxels: int = DEFAULT_MAX_VOXELS
    max_image_bytes: int = DEFAULT_MAX_BYTES
    lock_wait_s: float | None = 0.0
    settle_window_s: float | None = None
    finalize_above: Thresholds | None = None
    drop_below: Thresholds | None = None
    prioritize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be draft, final or dry-run, got {self.mode!r}")
        object.__setattr__(self, "mode", Mode(self.mode))
        for name in ("finalize_above", "drop_below"):
            object.__setattr__(self, name, thresholds(getattr(self, name), name))
        if self.finalize_above is not None and self.mode == "final":
            raise ConfigError(
                "--finalize-above decides per task which are submitted; drop --finalize "
                "(the others are saved as drafts)"
            )
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must not be negative, got {self.limit}")
        if str(self.empty) == "flag":  # an old settings file or script
            raise ConfigError(EMPTY_FLAG_REMOVED)
        if self.empty not in ("skip", "submit"):
            raise ConfigError(f"empty must be skip or submit, got {self.empty!r}")
        for name in ("fetch_workers", "write_workers", "queue_depth", "max_voxels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_image_bytes < 1:
            raise ConfigError(f"max_image_bytes must be positive, got {self.max_image_bytes}")
        if self.min_component_voxels < 0:
            raise ConfigError(
                f"min_component_voxels must be 0 or more, got {self.min_component_voxels}"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"name must be a task name (a string), got {self.name!r}")
        timeout = self.model_timeout_s
        if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
            raise ConfigError(
                f"model_timeout_s must be a positive number of seconds, got {self.model_timeout_s}"
            )
        for name in ("lock_wait_s", "settle_window_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must not be negative, got {value}")

    @property
    def results_dir(self) -> Path:
        """Where per-task results go."""
        return self.out_dir if self.out_dir is not None else self.work_dir / "results"


def resolve_options(
    given: Mapping[str, Any] | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> RunOptions:
    """The run's options: ``given`` (flags or keyword arguments) over the ``[run]`` table of
    ``autolabel.toml`` over the defaults of :class:`RunOptions` (see the module docstring).

    A ``None`` in ``given`` for one of :data:`FILE_OPTIONS` means "not given"; other
    options are taken as given. Relative ``work_dir``/``out_dir`` from the file are taken
    relative to the file's folder. Raises :class:`~autolabel.errors.ConfigError` for a bad
    file or value, ``TypeError`` naming the option (and the closest known one) for an option
    :class:`RunOptions` does not have. A single string as ``task_ids`` is one task id, ``None`` none.
    """
    data, config_file = load_config(config_path, cwd=cwd)
    table = data.get("run", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{config_file}: [run] must be a table")
    unknown = sorted(set(table) - set(FILE_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{config_file}: unknown [run] setting(s) {unknown}; known: {sorted(FILE_OPTIONS)}"
        )
    merged: dict[str, Any] = {}
    for name, value in table.items():
        merged[name] = _coerce(name, value, f"{config_file} [run]", base=config_file)
    given = dict(given or {})
    _refuse_unknown(given)
    for name, value in given.items():
        if name == "task_ids":
            merged[name] = _task_ids(value)
        elif name not in FILE_OPTIONS:
            merged[name] = value
        elif value is not None:
            merged[name] = _coerce(name, value, "command line", base=None)
    return RunOptions(**merged)


def _task_ids(value: Any) -> tuple[str, ...]:
    """``task_ids`` as given: None is none (all assigned tasks), a string is one task id
    (not one task per character), else an iterable of string ids."""
    if value is None:
        return ()
    ids = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(i, str) for i in ids):
        raise ConfigError(f"task_ids must be RedBrick task ids (strings), got {value!r}")
    return ids


#: Options a newcomer guesses from the command line's flags, and what to write instead.
_FLAG_HINTS = {
    "dry_run": 'mode="dry-run"', "finalize": 'mode="final"', "task_id": "task_ids=[...]",
    "work": "work_dir", "out": "out_dir",
}  # fmt: skip


def _refuse_unknown(given: Mapping[str, Any]) -> None:
    """A caller's option :class:`RunOptions` does not have: one ``TypeError`` saying which."""
    import dataclasses
    import difflib

    known = [field.name for field in dataclasses.fields(RunOptions)]
    for name in sorted(set(given) - set(known)):
        hint = _FLAG_HINTS.get(name) or next(iter(difflib.get_close_matches(name, known, 1)), "")
        raise TypeError(
            f"unknown run option {name!r}" + (f" (did you mean {hint}?)" if hint else "")
            + f"; the options are the fields of autolabel.RunOptions: {', '.join(known)}"
        )  # fmt: skip


def _coerce(name: str, value: Any, source: str, *, base: Path | None) -> Any:
    if name in ("work_dir", "out_dir"):
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{source}: {name} must be a path")
        path = Path(value).expanduser()
        return base.parent / path if base is not None and not path.is_absolute() else path
    if name in ("limit", "fetch_workers", "write_workers", "queue_depth"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
        return value
    if name in ("force", "prioritize"):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if name in ("finalize_above", "drop_below"):
        return thresholds(value, f"{source} {name}")
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    return value


__all__ = ["DEFAULT_MODEL", "FILE_OPTIONS", "MODES", "Mode", "RunOptions", "resolve_options"]

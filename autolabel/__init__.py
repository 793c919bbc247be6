"""autolabel: pre-label medical images in RedBrick AI projects with segmentation models.

The front door -- what a script or notebook may use (README.md, "Python API")::

    import autolabel
    model = autolabel.load("ct-threshold")          # load once, reuse across runs
    summary = autolabel.run(model=model, mode="dry-run", limit=2)
    print(len(summary.done), summary.failed)

:func:`run`, :func:`load`, :func:`open_project`, :func:`review`, :func:`undo`, the values
:class:`RunOptions`, :class:`RunSummary`, :class:`Volume`, :class:`ModelSpec` and the errors
(:mod:`autolabel.errors`). Settings left out resolve as on the command line (flags over the
environment, ``autolabel.toml`` and the RedBrick CLI profile). Everything else is internal;
ARCHITECTURE.md says which module owns what.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel.errors import (
    AuthError,
    AutolabelError,
    BadModelOutputError,
    ConfigError,
    ConversionError,
    GraphQLError,
    ImageError,
    LedgerError,
    ModelError,
    ModelTimeoutError,
    NotFoundError,
    PlatformError,
    TaskSkipped,
    TaskStateError,
    TaskWriteBusy,
    TransportError,
    WorkerLostError,
    WorkFolderBusy,
)
from autolabel.records import Volume

if TYPE_CHECKING:
    from autolabel.inference.spec import ModelSpec, SegmentationModel
    from autolabel.pipeline.options import RunOptions
    from autolabel.pipeline.ray import RayOptions
    from autolabel.pipeline.summary import RunSummary
    from autolabel.pipeline.undo import UndoSummary
    from autolabel.redbrick import Project
    from autolabel.reviews import ReviewSummary

__version__ = "0.1.0"

_LAZY = {
    "RunOptions": "autolabel.pipeline.options",
    "RunSummary": "autolabel.pipeline.summary",
    "ModelSpec": "autolabel.inference.spec",
}


def __getattr__(name: str) -> Any:
    # The values import numpy-heavy modules: load them on first use, so that `import
    # autolabel` (the command line, the emulator) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autolabel' has no attribute {name!r}")


def open_project(
    *,
    url: str | None = None,
    org_id: str | None = None,
    project_id: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    config: str | Path | None = None,
) -> Project:
    """Open a RedBrick project, resolving missing settings as the command line does."""
    from autolabel.redbrick import get_project
    from autolabel.settings import resolve_connection

    settings = resolve_connection(
        url=url,
        org_id=org_id,
        project_id=project_id,
        api_key=api_key,
        profile=profile,
        config_path=config,
    )
    return get_project(settings.org_id, settings.project_id, settings.api_key, url=settings.url)


def load(model: str | Path | None = None, *, device: str = "auto") -> SegmentationModel:
    """Load a model card by name or path (default ``ct-threshold``), ready to predict."""
    from autolabel.inference import load_model
    from autolabel.pipeline.options import DEFAULT_MODEL

    return load_model(model or DEFAULT_MODEL, device=device)


def run(
    *,
    project: Project | None = None,
    model: str | Path | SegmentationModel | None = None,
    device: str | None = None,
    stop: threading.Event | None = None,
    url: str | None = None,
    org_id: str | None = None,
    project_id: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    config: str | Path | None = None,
    ray: bool | str | RayOptions | None = None,
    **options: Any,
) -> RunSummary:
    """Pre-label a project's tasks; ``options`` are the fields of :class:`RunOptions`,
    resolved with ``model`` and ``device`` like the command line's flags (over ``[run]`` in
    ``autolabel.toml``, over the defaults).

    ``mode`` is ``"draft"`` (default), ``"final"`` or ``"dry-run"``. Returns the
    :class:`RunSummary`; per-task failures are in it, run-fatal errors raise.

    With ``ray`` (``True``, an address, or :class:`~autolabel.pipeline.ray.RayOptions`) the
    tasks run on Ray actors: ``model`` must then be a card name or path (each actor loads
    it), and the connection is given by the connection arguments, not an open ``project``.
    """
    from autolabel.pipeline import run as run_pipeline
    from autolabel.pipeline.options import resolve_options

    loaded = None if model is None or isinstance(model, str | Path) else model
    if loaded is not None:
        _require_model(loaded)
    name = loaded.spec.name if loaded is not None else None if model is None else str(model)
    resolved = resolve_options({**options, "model": name, "device": device}, config_path=config)
    connection: dict[str, Any] = {"url": url, "org_id": org_id, "project_id": project_id}
    connection.update(api_key=api_key, profile=profile, config=config)
    if ray is not None and ray is not False:
        if project is not None:
            raise ConfigError(
                "run(ray=...) opens its own connections (the actors need the key): pass url, "
                "org_id, project_id and api_key (or a profile), not project="
            )
        if loaded is not None:
            raise ConfigError("run(ray=...) needs the model as a card name or path")
        return _run_on_ray(ray, resolved, stop, connection)
    target = project or open_project(**connection)
    try:
        model_ = loaded or load(resolved.model, device=resolved.device)
        return run_pipeline(target, model_, resolved, stop=stop)
    finally:
        if project is None:
            target.close()


def review(
    *,
    stage: str = "Review_1",
    decision: str = "auto",
    model: str | Path | SegmentationModel | None = None,
    min_dice: float = 0.8,
    comment: str | None = None,
    task_ids: Sequence[str] = (),
    project: Project | None = None,
    **connection: Any,
) -> ReviewSummary:
    """Accept or reject the tasks queued for the key in the review ``stage`` (see
    :func:`autolabel.reviews.review_tasks`): ``decision`` is ``accept``, ``reject``,
    ``auto`` (the model decides by Dice) or ``correct`` (accept with the model's labels).
    ``connection`` takes the arguments of :func:`open_project`."""
    from autolabel.pipeline.options import resolve_options
    from autolabel.reviews import review_tasks

    name = str(model) if isinstance(model, str | Path) else None
    resolved = resolve_options({"model": name}, config_path=connection.get("config"))
    target = project or open_project(**connection)
    try:
        loaded = None if isinstance(model, str | Path) else model
        if loaded is not None:
            _require_model(loaded)
        if loaded is None and decision in ("auto", "correct"):
            loaded = load(resolved.model, device=resolved.device)
        return review_tasks(
            target, loaded, stage, decision=decision, min_dice=min_dice, comment=comment,
            task_ids=tuple(task_ids), work_dir=resolved.work_dir,
        )  # fmt: skip
    finally:
        if project is None:
            target.close()


def undo(
    *,
    run_ids: Sequence[str] = (),
    models: Sequence[str] = (),
    dry_run: bool = False,
    work_dir: str | Path | None = None,
    project: Project | None = None,
    **connection: Any,
) -> UndoSummary:
    """Revert what the runs ``run_ids`` (or the models ``"NAME@VERSION"``) wrote, where no
    person has touched the task since (see :mod:`autolabel.pipeline.undo`); ``dry_run``
    only plans it. ``work_dir`` is the runs' work folder (default as for :func:`run`);
    ``connection`` takes the arguments of :func:`open_project`."""
    from autolabel.pipeline.options import resolve_options
    from autolabel.pipeline.undo import undo as undo_writes

    folder = Path(work_dir) if work_dir is not None else None
    if folder is None:
        folder = resolve_options({}, config_path=connection.get("config")).work_dir
    target = project or open_project(**connection)
    try:
        return undo_writes(
            target, folder, run_ids=tuple(run_ids), models=tuple(models), dry_run=dry_run
        )
    finally:
        if project is None:
            target.close()


def _require_model(model: object) -> None:
    """A caller's ``model`` that is neither a card name/path nor a loaded model: a TypeError."""
    from autolabel.inference.spec import SegmentationModel

    if not isinstance(model, SegmentationModel):
        raise TypeError(
            f"model must be a card name or path, or a model from autolabel.load(...) "
            f"(with .spec and .predict), got {type(model).__name__} {model!r}"
        )


def _run_on_ray(
    ray: bool | str | RayOptions,
    options: RunOptions,
    stop: threading.Event | None,
    connection: dict[str, Any],
) -> RunSummary:
    from autolabel.pipeline.ray import RayOptions, run_on_ray
    from autolabel.settings import resolve_connection

    if isinstance(ray, RayOptions):
        cluster = ray
    else:
        cluster = RayOptions(address=ray if isinstance(ray, str) and ray else None)
    config = connection.pop("config")
    settings = resolve_connection(**connection, config_path=config)
    return run_on_ray(settings, options.model, options, cluster, device=options.device, stop=stop)


__all__ = [
    "AuthError",
    "AutolabelError",
    "BadModelOutputError",
    "ConfigError",
    "ConversionError",
    "GraphQLError",
    "ImageError",
    "LedgerError",
    "ModelError",
    "ModelSpec",
    "ModelTimeoutError",
    "NotFoundError",
    "PlatformError",
    "RunOptions",
    "RunSummary",
    "TaskSkipped",
    "TaskStateError",
    "TaskWriteBusy",
    "TransportError",
    "Volume",
    "WorkFolderBusy",
    "WorkerLostError",
    "__version__",
    "load",
    "open_project",
    "review",
    "run",
    "undo",
]

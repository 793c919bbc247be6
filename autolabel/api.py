"""The Python API: the command line's jobs as functions, for notebooks and scripts.

Example (against the emulator or a real project)::

    import autolabel
    summary = autolabel.run(url=..., org_id=..., project_id=..., api_key=...,
                            model="ct-threshold", mode="draft")
    print(len(summary.done), summary.failed)

Connection arguments left out are resolved like the command line's (environment,
``autolabel.toml``, RedBrick CLI profile). A loaded model can be passed in to keep it warm
across calls.

``run(..., ray=True)`` spreads the tasks over Ray actors on a local instance;
``ray="auto"`` or ``ray="ray://host:port"`` joins a cluster; ``ray=RayOptions(...)`` sets
actors, CPUs per actor and tasks in flight (see :mod:`autolabel.pipeline.ray`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolabel.errors import ConfigError
from autolabel.inference.spec import SegmentationModel
from autolabel.pipeline import RunOptions, RunSummary
from autolabel.pipeline import run as run_pipeline
from autolabel.redbrick import Project, get_project
from autolabel.settings import resolve_connection

if TYPE_CHECKING:
    from autolabel.pipeline.ray import RayOptions

#: The model a run uses when none is named: classical CT thresholds (body, lungs, bone).
DEFAULT_MODEL = "ct-threshold"


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
    settings = resolve_connection(
        url=url,
        org_id=org_id,
        project_id=project_id,
        api_key=api_key,
        profile=profile,
        config_path=config,
    )
    return get_project(settings.org_id, settings.project_id, settings.api_key, url=settings.url)


def load(model: str | Path = DEFAULT_MODEL, *, device: str = "auto") -> SegmentationModel:
    """Load a model card by name or path, ready to predict (see :mod:`autolabel.inference`)."""
    from autolabel.inference import load_model

    return load_model(model, device=device)


def run(
    *,
    project: Project | None = None,
    model: str | Path | SegmentationModel = DEFAULT_MODEL,
    device: str = "auto",
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
    """Pre-label a project's tasks; ``options`` are the fields of :class:`RunOptions`.

    ``mode`` is ``"draft"`` (default), ``"final"`` or ``"dry-run"``. Returns the
    :class:`RunSummary`; per-task failures are in it, run-fatal errors raise.

    With ``ray`` (``True``, an address, or :class:`~autolabel.pipeline.ray.RayOptions`) the tasks
    run on Ray actors: ``model`` must then be a card name or path (each actor loads it),
    and the connection is given by the connection arguments, not an open ``project``.
    """
    if ray is not None and ray is not False:
        if project is not None:
            raise ConfigError(
                "run(ray=...) opens its own connections (the actors need the key): pass url, "
                "org_id, project_id and api_key (or a profile), not project="
            )
        if not isinstance(model, str | Path):
            raise ConfigError("run(ray=...) needs the model as a card name or path")
        return _run_on_ray(
            ray,
            model,
            device,
            stop,
            RunOptions(**_paths(options)),
            url=url,
            org_id=org_id,
            project_id=project_id,
            api_key=api_key,
            profile=profile,
            config=config,
        )
    opened = project is None
    target = project or open_project(
        url=url,
        org_id=org_id,
        project_id=project_id,
        api_key=api_key,
        profile=profile,
        config=config,
    )
    try:
        loaded = model if not isinstance(model, str | Path) else load(model, device=device)
        return run_pipeline(target, loaded, RunOptions(**_paths(options)), stop=stop)
    finally:
        if opened:
            target.close()


def _run_on_ray(
    ray: bool | str | RayOptions,
    model: str | Path,
    device: str,
    stop: threading.Event | None,
    options: RunOptions,
    **connection: Any,
) -> RunSummary:
    from autolabel.pipeline.ray import RayOptions, run_on_ray

    if isinstance(ray, RayOptions):
        cluster = ray
    else:
        cluster = RayOptions(address=ray if isinstance(ray, str) and ray else None)
    settings = resolve_connection(
        url=connection["url"],
        org_id=connection["org_id"],
        project_id=connection["project_id"],
        api_key=connection["api_key"],
        profile=connection["profile"],
        config_path=connection["config"],
    )
    return run_on_ray(settings, model, options, cluster, device=device, stop=stop)


def _paths(options: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("work_dir", "out_dir"):
        if out.get(key) is not None:
            out[key] = Path(out[key])
    if "task_ids" in out:
        out["task_ids"] = tuple(out["task_ids"])
    return out

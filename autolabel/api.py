"""The Python API: the command line's jobs as functions, for notebooks and scripts.

Example (against the emulator or a real project)::

    import autolabel
    summary = autolabel.run(url=..., org_id=..., project_id=..., api_key=...,
                            model="ct-threshold", mode="draft")
    print(len(summary.done), summary.failed)

Connection arguments left out are resolved like the command line's (environment,
``autolabel.toml``, RedBrick CLI profile). A loaded model can be passed in to keep it warm
across calls.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autolabel.inference.spec import SegmentationModel
from autolabel.pipeline import RunOptions, RunSummary
from autolabel.pipeline import run as run_pipeline
from autolabel.redbrick import Project, get_project
from autolabel.settings import resolve_connection

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
    **options: Any,
) -> RunSummary:
    """Pre-label a project's tasks; ``options`` are the fields of :class:`RunOptions`.

    ``mode`` is ``"draft"`` (default), ``"final"`` or ``"dry-run"``. Returns the
    :class:`RunSummary`; per-task failures are in it, run-fatal errors raise.
    """
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


def _paths(options: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(options)
    for key in ("work_dir", "out_dir"):
        if out.get(key) is not None:
            out[key] = Path(out[key])
    if "task_ids" in out:
        out["task_ids"] = tuple(out["task_ids"])
    return out

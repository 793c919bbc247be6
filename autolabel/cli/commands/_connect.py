"""Connection flags shared by the commands that talk to RedBrick, and opening the project.

Precedence of each setting (see :mod:`autolabel.settings`): command-line flags, then the
environment (``REDBRICK_URL``, ``REDBRICK_ORG_ID``, ``REDBRICK_PROJECT_ID``,
``REDBRICK_API_KEY``), then ``autolabel.toml``, then the RedBrick CLI's credentials profile.
"""

from __future__ import annotations

import argparse
import sys

from autolabel.errors import ConfigError, NotFoundError, TransportError
from autolabel.redbrick import Project, get_project
from autolabel.settings import ConnectionSettings, check_ids, resolve_connection


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--url --org --project --api-key --profile --config`` to ``parser``."""
    group = parser.add_argument_group("connection (flags > environment > autolabel.toml > profile)")
    group.add_argument("--url", help="RedBrick URL (env REDBRICK_URL)")
    group.add_argument("--org", dest="org_id", help="organization id (env REDBRICK_ORG_ID)")
    group.add_argument("--project", dest="project_id", help="project id (env REDBRICK_PROJECT_ID)")
    group.add_argument(
        "--api-key",
        help="API key (env REDBRICK_API_KEY; prefer the environment: flags show in `ps`)",
    )
    group.add_argument("--profile", help="RedBrick CLI credentials profile (env REDBRICK_PROFILE)")
    group.add_argument("--config", help="autolabel.toml to read (default: ./autolabel.toml)")


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    """Resolve the connection settings from ``args`` (and the other sources).

    Notes about the settings (e.g. a skipped session profile) go to stderr; the key never
    does. Raises :class:`~autolabel.errors.ConfigError` for missing settings and for org or
    project ids that are no UUIDs.
    """
    settings = resolve_connection(
        url=args.url,
        org_id=args.org_id,
        project_id=args.project_id,
        api_key=args.api_key,
        profile=args.profile,
        config_path=args.config,
    )
    for note in settings.notes:
        print(f"autolabel: note: {note}", file=sys.stderr)
    check_ids(settings)
    return settings


def connect(args: argparse.Namespace) -> Project:
    """Open the project the connection settings of ``args`` name.

    Raises :class:`~autolabel.errors.ConfigError` for missing settings and for an org or
    project the key cannot see (exit 2), :class:`~autolabel.errors.AuthError` when RedBrick
    refuses the key and :class:`~autolabel.errors.TransportError` when it cannot be reached
    or the url leads to no API (HTTP 404; exit 3).
    """
    settings = connection_settings(args)
    try:
        return get_project(settings.org_id, settings.project_id, settings.api_key, url=settings.url)
    except NotFoundError as exc:
        if exc.status == 404:  # no API at this url
            raise TransportError(str(exc), operation=exc.operation, status=404) from None
        raise ConfigError(
            f"{exc}: check the organization id (from {settings.sources['org_id']}) and the "
            f"project id (from {settings.sources['project_id']})"
        ) from None


def require_stage(project: Project, name: str, *, review: bool = False) -> None:
    """Raise :class:`~autolabel.errors.ConfigError` unless ``name`` is a Label stage (a
    Review stage with ``review=True``) of ``project``; the message lists the ones it has."""
    kind = "review" if review else "label"
    fits = [s.stage_name for s in project.stages if (s.is_review if review else s.is_label)]
    if name in fits:
        return
    known = any(s.stage_name == name for s in project.stages)
    found = f"{name!r} is not a {kind} stage" if known else f"there is no stage {name!r}"
    raise ConfigError(
        f"{found} in project {project.name or project.project_id}; its {kind} stages: "
        + (", ".join(fits) or "none")
        + f" (give one with --stage; all stages: {', '.join(s.stage_name for s in project.stages)})"
    )

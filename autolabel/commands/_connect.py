"""Connection flags shared by the commands that talk to RedBrick, and opening the project.

Precedence of each setting (see :mod:`autolabel.settings`): command-line flags, then the
environment (``REDBRICK_URL``, ``REDBRICK_ORG_ID``, ``REDBRICK_PROJECT_ID``,
``REDBRICK_API_KEY``), then ``autolabel.toml``, then the RedBrick CLI's credentials profile.
"""

from __future__ import annotations

import argparse
import sys

from autolabel.redbrick import Project, get_project
from autolabel.settings import ConnectionSettings, resolve_connection


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
    does. Raises :class:`~autolabel.errors.ConfigError` for missing settings.
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
    return settings


def connect(args: argparse.Namespace) -> Project:
    """Open the project the connection settings of ``args`` name.

    Raises :class:`~autolabel.errors.ConfigError` for missing settings and
    :class:`~autolabel.errors.AuthError` / :class:`~autolabel.errors.TransportError` when
    RedBrick refuses the key or cannot be reached.
    """
    settings = connection_settings(args)
    return get_project(settings.org_id, settings.project_id, settings.api_key, url=settings.url)

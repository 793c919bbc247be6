"""Settings: how autolabel reaches RedBrick, and the options of a run.

Connection settings
-------------------
Four settings: the API ``url``, the organisation id ``org_id``, the ``project_id`` and the
``api_key``. Each one is taken, independently, from the first source that has it:

1. command-line flags: ``--url``, ``--org``, ``--project``, ``--api-key`` (a flag is visible
   to other users in the process list: prefer the environment for the key);
2. environment variables: ``REDBRICK_URL``, ``REDBRICK_ORG_ID``, ``REDBRICK_PROJECT_ID``,
   ``REDBRICK_API_KEY``;
3. ``autolabel.toml``: the file given with ``--config``, else ``autolabel.toml`` in the
   current folder when there is one. Its ``[redbrick]`` table takes ``url``, ``org_id``,
   ``project_id`` and either ``api_key_env`` (the name of an environment variable holding the
   key; recommended) or ``api_key`` (discouraged: the key then sits in a file, and autolabel
   warns);
4. the RedBrick CLI's credentials file (written by ``redbrick config``):
   ``$VIRTUAL_ENV/.redbrickai/credentials`` when a virtual environment is active, else
   ``~/.redbrickai/credentials``. The profile is chosen by ``--profile``, else
   ``REDBRICK_PROFILE``, else ``profile`` in its ``[default]`` section; ``key``, ``org`` and
   ``url`` are read from it. Browser-login profiles (``type = session``) hold no API key and
   are skipped with a note. The project id is never in this file;
5. the url defaults to RedBrick's public API, :data:`DEFAULT_URL`.

A setting that no source provides raises :class:`~autolabel.errors.ConfigError` naming
every missing setting and every way to provide it; :func:`check_ids` checks that the org
and project ids are UUIDs (the API's ``orgId: UUID!``). The url is normalised as the official SDK does
(``redbrick/common/client.py`` ``_get_api_url``: only a url containing ``localhost`` keeps
``http://`` and its path), never silently: a url sent elsewhere than it reads gets a note,
and ``http://`` to a loopback address (``127.0.0.1``, ``::1``), which the SDK would turn into
``https://`` and fail on, is refused with the url to use instead. The API key is never
printed: the ``repr`` and ``str`` of :class:`ConnectionSettings` mask it, no error message
contains it, and the resolved key is registered with :func:`autolabel.settings.secrets.keep_secret`.

Run options (the ``[run]`` table of the same file) are resolved by
:func:`autolabel.pipeline.options.resolve_options`.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolabel.errors import ConfigError
from autolabel.settings.secrets import keep_secret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: RedBrick's public API, the url when no source names one (as in the RedBrick CLI).
DEFAULT_URL = "https://api.redbrickai.com"
#: The configuration file looked for in the current folder.
CONFIG_FILENAME = "autolabel.toml"
#: The work folder (ledger, local payloads) when none is given, relative to the current folder.
DEFAULT_WORK_DIR = "autolabel-work"

#: Environment variable of each connection setting.
ENV_VARS: dict[str, str] = {
    "url": "REDBRICK_URL",
    "org_id": "REDBRICK_ORG_ID",
    "project_id": "REDBRICK_PROJECT_ID",
    "api_key": "REDBRICK_API_KEY",
}
_FLAGS = {"url": "--url", "org_id": "--org", "project_id": "--project", "api_key": "--api-key"}
_TOML_KEYS = {
    "url": "url",
    "org_id": "org_id",
    "project_id": "project_id",
    "api_key": "api_key_env (or api_key)",
}
_PROFILE_KEYS = {"url": "url", "org_id": "org", "api_key": "key"}
_MASK = "***"


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where and as whom to reach RedBrick.

    ``sources`` names where each setting came from (e.g. ``{"api_key": "REDBRICK_API_KEY"}``)
    and ``notes`` carries remarks for the user (a skipped profile, a key stored in a file).
    ``repr``/``str`` never show the key.
    """

    url: str
    org_id: str
    project_id: str
    api_key: str = field(repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return (
            f"ConnectionSettings(url={self.url!r}, org_id={self.org_id!r}, "
            f"project_id={self.project_id!r}, api_key={_MASK!r})"
        )

    __str__ = __repr__


def load_config(
    config_path: str | os.PathLike[str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], Path | None]:
    """Read ``autolabel.toml``: ``config_path`` if given (it must exist), else the one in
    ``cwd`` (the current folder) if present. Returns the tables and the file read (or None).
    """
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
    else:
        path = Path(cwd if cwd is not None else os.getcwd()) / CONFIG_FILENAME
        if not path.is_file():
            return {}, None
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "save it as UTF-8, as TOML requires"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    unknown = sorted(set(data) - {"redbrick", "run"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {unknown}; expected [redbrick] and [run]")
    return data, path


def resolve_connection(
    *,
    url: str | None = None,
    org_id: str | None = None,
    project_id: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    credentials_path: str | os.PathLike[str] | None = None,
) -> ConnectionSettings:
    """Resolve the connection settings from all sources, in the documented precedence.

    The keyword arguments are the command-line flags (``None``/empty: not given). ``env``
    defaults to ``os.environ``; ``credentials_path`` overrides the RedBrick CLI's file
    location (tests, unusual set-ups). Raises ``ConfigError`` for a missing setting, a bad
    file or an unusable url; the message never contains the key.
    """
    env = os.environ if env is None else env
    notes: list[str] = []
    data, config_file = load_config(config_path, cwd=cwd)
    layers: list[tuple[str, dict[str, str]]] = [
        ("command line", _present(url=url, org_id=org_id, project_id=project_id, api_key=api_key)),
        ("environment", {k: env[v] for k, v in ENV_VARS.items() if env.get(v)}),
    ]
    if config_file is not None:
        table = _toml_connection(data.get("redbrick", {}), config_file, env, notes)
        layers.append((str(config_file), table))
    layers.append(_profile_layer(profile, env, credentials_path, notes))
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key not in values:
                values[key], sources[key] = value, _describe(source, key)
    if "url" not in values:
        values["url"], sources["url"] = DEFAULT_URL, "default"
    missing = [key for key in ("org_id", "project_id", "api_key") if key not in values]
    if missing:
        raise ConfigError(_missing_message(missing, notes))
    keep_secret(values["api_key"])
    notes.extend(_url_notes(values["url"], sources["url"]))
    return ConnectionSettings(
        values["url"].rstrip("/"),
        values["org_id"],
        values["project_id"],
        values["api_key"],
        sources=sources,
        notes=tuple(notes),
    )


def check_ids(settings: ConnectionSettings) -> None:
    """Raise ``ConfigError`` unless the org and project ids are UUIDs, as RedBrick's API
    requires (``orgId: UUID!``, ``projectId: UUID!``); the message says where each came from."""
    from autolabel.redbrick.types import is_uuid

    for key, what in (("org_id", "organization id"), ("project_id", "project id")):
        value = getattr(settings, key)
        if not is_uuid(value):
            raise ConfigError(
                f"the {what} {value!r} (from {settings.sources.get(key, 'settings')}) is not a "
                "UUID: copy it from the project's address, "
                "app.redbrickai.com/<organization id>/projects/<project id>"
            )


def ensure_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written in it.

    ``what`` names the setting (``--out``) in the ``ConfigError`` raised otherwise, so a run
    stops before it fetches anything rather than failing every task at its last step.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot write in the {what} folder {folder}: {reason}; give a folder you can "
            f"write to with {what}"
        ) from None
    return folder


def credentials_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the RedBrick CLI keeps its credentials, for this environment."""
    env = os.environ if env is None else env
    if env.get("VIRTUAL_ENV"):
        return Path(env["VIRTUAL_ENV"]) / ".redbrickai" / "credentials"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".redbrickai" / "credentials"


# -- helpers ---------------------------------------------------------------------------


def _present(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _url_notes(url: str, source: str) -> list[str]:
    """Notes on where ``url`` really leads; ``ConfigError`` where that cannot work."""
    from autolabel.redbrick.endpoint import graphql_endpoint

    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"the RedBrick url must start with http:// or https://, got {url!r} (from {source})"
        )
    given = urllib.parse.urlsplit(url.lower())
    endpoint = graphql_endpoint(url)
    used = urllib.parse.urlsplit(endpoint)
    notes = []
    if given.scheme == "http" and used.scheme == "https":
        if _is_loopback(given.hostname or ""):
            port = given.netloc.rpartition("]")[2].rpartition(":")[2] if ":" in given.netloc else ""
            local = given._replace(netloc="localhost" + (f":{port}" if port else ""))
            raise ConfigError(
                f"the RedBrick url {url} (from {source}) would be sent over https to "
                f"{endpoint}: like RedBrick's SDK, autolabel keeps http:// only for urls "
                f"that contain 'localhost'; use {urllib.parse.urlunsplit(local)}"
            )
        notes.append(
            f"the RedBrick url {url} (from {source}) is reached over https, at {endpoint}, "
            "as RedBrick's SDK does: http:// is kept only for urls that contain 'localhost'"
        )
    path = given.path.rstrip("/")
    if path and not used.path.startswith(path):
        notes.append(
            f"the path {path} of the RedBrick url (from {source}) is not used: the API is at "
            f"{endpoint}, as RedBrick's SDK normalises it"
        )
    return notes


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(source: str, key: str) -> str:
    if source == "command line":
        return _FLAGS[key]
    if source == "environment":
        return ENV_VARS[key]
    return source


def _toml_connection(
    table: Any, path: Path, env: Mapping[str, str], notes: list[str]
) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [redbrick] must be a table")
    allowed = {"url", "org_id", "project_id", "api_key", "api_key_env"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown [redbrick] setting(s) {unknown}; known: {sorted(allowed)}"
        )
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: [redbrick] {key} must be a string")
    layer = {k: table[k] for k in ("url", "org_id", "project_id") if table.get(k)}
    if table.get("api_key_env"):
        name = table["api_key_env"]
        if env.get(name):
            layer["api_key"] = env[name]
        else:
            notes.append(f"{path} names api_key_env = {name!r}, but {name} is not set")
    elif table.get("api_key"):
        message = (
            f"{path} stores the API key in the file; this is discouraged: set "
            "REDBRICK_API_KEY or name a variable with api_key_env instead"
        )
        notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        layer["api_key"] = table["api_key"]
    return layer


def _profile_layer(
    profile: str | None,
    env: Mapping[str, str],
    credentials_path: str | os.PathLike[str] | None,
    notes: list[str],
) -> tuple[str, dict[str, str]]:
    path = Path(credentials_path) if credentials_path is not None else credentials_file(env)
    if not path.is_file():
        if profile:
            raise ConfigError(f"--profile {profile!r} given, but there is no {path}")
        return ("credentials", {})
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        notes.append(f"ignored the RedBrick credentials file {path}: cannot parse it ({exc})")
        return ("credentials", {})
    chosen, how = profile, "--profile"
    if not chosen and env.get("REDBRICK_PROFILE"):
        chosen, how = env["REDBRICK_PROFILE"], "REDBRICK_PROFILE"
    if not chosen:
        chosen, how = parser.get("default", "profile", fallback=""), f"[default] of {path}"
    if not chosen:
        return ("credentials", {})
    if not parser.has_section(chosen):
        message = f"profile {chosen!r} (from {how}) is not in {path}"
        if how == "--profile" or how == "REDBRICK_PROFILE":
            raise ConfigError(message)
        notes.append(message)
        return ("credentials", {})
    section = parser[chosen]
    if section.get("type", "apikey").strip().lower() != "apikey":
        notes.append(
            f"skipped profile {chosen!r} of {path}: it is a {section.get('type')!r} profile "
            "(browser login) and holds no API key"
        )
        return ("credentials", {})
    layer = {key: section[name].strip() for key, name in _PROFILE_KEYS.items() if section.get(name)}
    return (f"RedBrick credentials profile {chosen!r}", layer)


def _missing_message(missing: list[str], notes: list[str]) -> str:
    lines = ["missing RedBrick connection settings:"]
    for key in missing:
        ways = [_FLAGS[key], f"environment variable {ENV_VARS[key]}"]
        ways.append(f"{_TOML_KEYS[key]} in the [redbrick] table of {CONFIG_FILENAME}")
        if key in _PROFILE_KEYS:
            ways.append(f"'{_PROFILE_KEYS[key]}' in the RedBrick CLI profile (redbrick config)")
        lines.append(f"  {key}: give it with " + ", ".join(ways[:-1]) + f" or {ways[-1]}")
    lines.extend(f"  note: {note}" for note in notes)
    return "\n".join(lines)


__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_URL",
    "DEFAULT_WORK_DIR",
    "ENV_VARS",
    "ConnectionSettings",
    "check_ids",
    "credentials_file",
    "ensure_writable_folder",
    "load_config",
    "resolve_connection",
]

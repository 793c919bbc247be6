"""Connection and run settings: precedence of every source, the credentials file, the key."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from autolabel.errors import ConfigError
from autolabel.pipeline.options import resolve_options
from autolabel.settings import DEFAULT_URL, resolve_connection

KEY = "rb-key-0123456789abcdef"
SOURCES = ("flag", "env", "toml", "profile")
# The settings each source can give (the credentials profile has no project id).
OFFERS = {
    "flag": ("url", "org_id", "project_id", "api_key"),
    "env": ("url", "org_id", "project_id", "api_key"),
    "toml": ("url", "org_id", "project_id", "api_key"),
    "profile": ("url", "org_id", "api_key"),
}
ENV_NAMES = {
    "url": "REDBRICK_URL",
    "org_id": "REDBRICK_ORG_ID",
    "project_id": "REDBRICK_PROJECT_ID",
    "api_key": "REDBRICK_API_KEY",
}


def _value(setting: str, source: str) -> str:
    return f"https://{source}.example" if setting == "url" else f"{setting}-from-{source}"


def _resolve(tmp_path: Path, given: dict[str, dict[str, str]], **extra: Any) -> Any:
    """Resolve with each source holding the settings in ``given[source]``."""
    env = {ENV_NAMES[k]: v for k, v in given.get("env", {}).items()}
    env["HOME"] = str(tmp_path / "home")
    toml = given.get("toml", {})
    if toml:
        lines = ["[redbrick]"]
        for key, value in toml.items():
            if key == "api_key":
                env["TEAM_RB_KEY"] = value
                key, value = "api_key_env", "TEAM_RB_KEY"
            lines.append(f'{key} = "{value}"')
        (tmp_path / "autolabel.toml").write_text("\n".join(lines) + "\n")
    profile = given.get("profile", {})
    if profile:
        names = {"url": "url", "org_id": "org", "api_key": "key"}
        body = "".join(f"{names[k]} = {v}\n" for k, v in profile.items())
        folder = tmp_path / "home" / ".redbrickai"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "credentials").write_text(f"[default]\nprofile = team\n\n[team]\n{body}")
    flags = {"org_id": "org_id", "project_id": "project_id", "api_key": "api_key", "url": "url"}
    kwargs = {flags[k]: v for k, v in given.get("flag", {}).items()}
    return resolve_connection(**kwargs, env=env, cwd=tmp_path, **extra)


PAIRS = [
    (high, low, setting)
    for high, low in itertools.combinations(SOURCES, 2)
    for setting in OFFERS[low]
    if setting in OFFERS[high]
]


@pytest.mark.parametrize(("high", "low", "setting"), PAIRS)
def test_precedence_of_every_source_pair(tmp_path: Path, high: str, low: str, setting: str) -> None:
    """Flags > environment > autolabel.toml > credentials profile, per setting."""
    base = {"org_id": "org", "project_id": "project", "api_key": KEY}
    given: dict[str, dict[str, str]] = {"flag": dict(base)}
    given["flag"].pop(setting, None)
    given.setdefault(high, {})[setting] = _value(setting, high)
    given.setdefault(low, {})[setting] = _value(setting, low)
    settings = _resolve(tmp_path, given)
    assert getattr(settings, setting) == _value(setting, high)
    expected_source = {
        "flag": "--",
        "env": "REDBRICK_",
        "toml": "autolabel.toml",
        "profile": "credentials profile 'team'",
    }[high]
    assert expected_source in settings.sources[setting]


def test_each_source_alone_is_enough(tmp_path: Path) -> None:
    """Settings combine across sources; the url defaults to RedBrick's public API."""
    settings = _resolve(
        tmp_path,
        {"profile": {"org_id": "org-p", "api_key": KEY}, "env": {"project_id": "proj-e"}},
    )
    assert (settings.url, settings.org_id, settings.project_id) == (DEFAULT_URL, "org-p", "proj-e")
    assert settings.api_key == KEY
    assert settings.sources["url"] == "default"


def test_missing_settings_name_every_way_to_give_them(tmp_path: Path) -> None:
    """The error lists each missing setting with its flag, variable, file key and profile key."""
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, {"flag": {"org_id": "org"}})
    message = str(info.value)
    for needle in ("project_id", "--project", "REDBRICK_PROJECT_ID", "autolabel.toml"):
        assert needle in message
    for needle in ("api_key", "--api-key", "REDBRICK_API_KEY", "api_key_env", "'key'"):
        assert needle in message
    assert "org_id:" not in message


def test_key_is_masked_in_repr_str_and_errors(tmp_path: Path) -> None:
    """The API key never shows in repr, str, or an error message."""
    settings = _resolve(tmp_path, {"flag": {"org_id": "o", "project_id": "p", "api_key": KEY}})
    assert KEY not in repr(settings) and KEY not in str(settings)
    assert "***" in repr(settings) and settings.api_key == KEY
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, {"flag": {"org_id": "o", "api_key": KEY, "url": "ftp://x"}})
    assert KEY not in str(info.value)
    with pytest.raises(ConfigError) as bad_url:
        _resolve(tmp_path, {"flag": {"org_id": "o", "project_id": "p", "api_key": KEY}}, url="x")
    assert KEY not in str(bad_url.value) and "http" in str(bad_url.value)


def _credentials(tmp_path: Path, text: str, venv: bool = False) -> dict[str, str]:
    root = tmp_path / ("venv" if venv else "home")
    (root / ".redbrickai").mkdir(parents=True, exist_ok=True)
    (root / ".redbrickai" / "credentials").write_text(text)
    env = {"HOME": str(tmp_path / "home"), "REDBRICK_PROJECT_ID": "p"}
    if venv:
        env["VIRTUAL_ENV"] = str(root)
    return env


CREDENTIALS = """\
[default]
profile = alpha

[alpha]
key = key-alpha
org = org-alpha
url = https://alpha.example

[beta]
key = key-beta
org = org-beta
url = https://beta.example
type = apikey

[browser]
org = org-browser
url = https://browser.example
type = session
"""


def test_profile_selection_flag_over_variable_over_default(tmp_path: Path) -> None:
    """--profile beats REDBRICK_PROFILE, which beats [default] profile."""
    env = _credentials(tmp_path, CREDENTIALS)
    assert resolve_connection(env=env, cwd=tmp_path).org_id == "org-alpha"
    env["REDBRICK_PROFILE"] = "beta"
    settings = resolve_connection(env=env, cwd=tmp_path)
    assert (settings.org_id, settings.api_key, settings.url) == (
        "org-beta",
        "key-beta",
        "https://beta.example",
    )
    assert resolve_connection(profile="alpha", env=env, cwd=tmp_path).api_key == "key-alpha"


def test_virtualenv_credentials_file_wins_over_home(tmp_path: Path) -> None:
    """With VIRTUAL_ENV set, the CLI's file inside the environment is the one read."""
    _credentials(tmp_path, CREDENTIALS)
    env = _credentials(tmp_path, CREDENTIALS.replace("org-alpha", "org-venv"), venv=True)
    assert resolve_connection(env=env, cwd=tmp_path).org_id == "org-venv"


def test_session_profile_is_skipped_with_a_note(tmp_path: Path) -> None:
    """A browser-login profile holds no key: it is skipped and the error says why."""
    env = _credentials(tmp_path, CREDENTIALS)
    env["REDBRICK_PROFILE"] = "browser"
    with pytest.raises(ConfigError, match=r"(?s)org_id.*api_key.*skipped profile 'browser'"):
        resolve_connection(env=env, cwd=tmp_path)
    env["REDBRICK_ORG_ID"], env["REDBRICK_API_KEY"] = "o", KEY
    settings = resolve_connection(env=env, cwd=tmp_path)
    assert settings.url == DEFAULT_URL and any("session" in n for n in settings.notes)


def test_unknown_profile_named_explicitly_is_an_error(tmp_path: Path) -> None:
    """A profile asked for by name must exist; a stale [default] only leaves a note."""
    env = _credentials(tmp_path, CREDENTIALS.replace("profile = alpha", "profile = gone"))
    with pytest.raises(ConfigError, match="'nope'"):
        resolve_connection(profile="nope", env=env, cwd=tmp_path)
    env["REDBRICK_ORG_ID"], env["REDBRICK_API_KEY"] = "o", KEY
    settings = resolve_connection(env=env, cwd=tmp_path)
    assert any("'gone'" in note for note in settings.notes)


def test_key_stored_in_toml_works_but_warns(tmp_path: Path) -> None:
    """api_key in autolabel.toml is accepted with a warning; the warning hides the key."""
    (tmp_path / "autolabel.toml").write_text(
        f'[redbrick]\norg_id = "o"\nproject_id = "p"\napi_key = "{KEY}"\n'
    )
    with pytest.warns(UserWarning, match="discouraged") as record:
        settings = resolve_connection(env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert settings.api_key == KEY
    assert all(KEY not in str(w.message) for w in record)


def test_api_key_env_naming_an_unset_variable_is_explained(tmp_path: Path) -> None:
    """api_key_env pointing at an unset variable shows up in the missing-key error."""
    (tmp_path / "autolabel.toml").write_text(
        '[redbrick]\norg_id = "o"\nproject_id = "p"\napi_key_env = "TEAM_KEY"\n'
    )
    with pytest.raises(ConfigError, match="TEAM_KEY is not set"):
        resolve_connection(env={"HOME": str(tmp_path)}, cwd=tmp_path)


def test_config_file_errors(tmp_path: Path) -> None:
    """A missing --config, invalid TOML and misspelt keys are configuration errors."""
    env = {"HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_connection(env=env, config_path=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[redbrick\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_connection(env=env, config_path=bad)
    bad.write_text('[redbrick]\norganisation = "o"\n')
    with pytest.raises(ConfigError, match="organisation"):
        resolve_connection(env=env, config_path=bad)


def test_explicit_config_path_replaces_the_one_in_the_current_folder(tmp_path: Path) -> None:
    """--config names the file; autolabel.toml in the current folder is then not read."""
    (tmp_path / "autolabel.toml").write_text('[redbrick]\norg_id = "cwd"\nproject_id = "p"\n')
    other = tmp_path / "team.toml"
    other.write_text('[redbrick]\norg_id = "team"\nproject_id = "p"\n')
    env = {"HOME": str(tmp_path), "REDBRICK_API_KEY": KEY}
    assert resolve_connection(env=env, cwd=tmp_path).org_id == "cwd"
    assert resolve_connection(env=env, cwd=tmp_path, config_path=other).org_id == "team"


def test_run_settings_flags_over_file_over_defaults(tmp_path: Path) -> None:
    """[run] in autolabel.toml sets run options; flags override; paths are file-relative."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "autolabel.toml").write_text(
        '[run]\nmodel = "phantom-unet"\nmode = "final"\nwork_dir = "work"\nqueue_depth = 4\n'
    )
    run = resolve_options({"mode": "dry-run", "limit": None}, cwd=folder)
    assert (run.model, run.mode, run.queue_depth, run.limit) == ("phantom-unet", "dry-run", 4, None)
    assert run.work_dir == folder / "work"
    assert run.stage == "Label" and not run.force
    assert resolve_options({}, cwd=tmp_path).work_dir == Path("autolabel-work")


def test_run_settings_reject_bad_values(tmp_path: Path) -> None:
    """Wrong types, unknown keys and bad modes in [run] are configuration errors."""
    path = tmp_path / "autolabel.toml"
    for body, needle in (
        ('queue_depth = "deep"', "integer"),
        ("modle = 'x'", "modle"),
        ('mode = "submit"', "draft, final or dry-run"),
        ("fetch_workers = 0", "at least 1"),
    ):
        path.write_text(f"[run]\n{body}\n")
        with pytest.raises(ConfigError, match=needle):
            resolve_options(cwd=tmp_path)


def test_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "autolabel.toml"
    bad.write_bytes(b'[redbrick]\norg_id = "caf\xe9"\n')
    for resolve in (
        lambda: resolve_connection(env={"HOME": str(tmp_path)}, cwd=tmp_path),
        lambda: resolve_options(cwd=tmp_path),
    ):
        with pytest.raises(ConfigError, match=f"{bad} is not UTF-8 text .*save it as UTF-8"):
            resolve()


def _connect_to(tmp_path: Path, url: str) -> Any:
    env = {"HOME": str(tmp_path), "REDBRICK_API_KEY": KEY}
    return resolve_connection(url=url, org_id="o", project_id="p", env=env, cwd=tmp_path)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]"])
def test_http_to_a_loopback_address_is_refused_with_the_url_to_use(
    tmp_path: Path, host: str
) -> None:
    """RedBrick's SDK keeps http only for urls that contain ``localhost``: it would send this
    one over https and fail on TLS, so autolabel says what to write instead."""
    with pytest.raises(ConfigError, match=r"use http://localhost:8765$"):
        _connect_to(tmp_path, f"http://{host}:8765")


def test_urls_the_sdk_rewrites_say_so_and_real_hosts_stay_on_tls(tmp_path: Path) -> None:
    from autolabel.redbrick.endpoint import graphql_endpoint

    plain = _connect_to(tmp_path, "http://team.example.com/app")
    assert any(
        "reached over https, at https://team.example.com/api/graphql/" in n for n in plain.notes
    )
    assert any("path /app of the RedBrick url" in n for n in plain.notes)
    assert graphql_endpoint(plain.url).startswith("https://")
    assert _connect_to(tmp_path, "http://localhost:8765").notes == ()
    assert _connect_to(tmp_path, "https://team.redbrickai.com").notes == ()


def test_org_and_project_ids_must_be_uuids(tmp_path: Path) -> None:
    from autolabel.settings import check_ids

    with pytest.raises(ConfigError, match=r"organization id 'o' \(from --org\) is not a UUID"):
        check_ids(_connect_to(tmp_path, "http://localhost:1"))
    uuid = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
    env = {"HOME": str(tmp_path), "REDBRICK_API_KEY": KEY}
    check_ids(resolve_connection(org_id=uuid, project_id=uuid, env=env, cwd=tmp_path))


def test_the_resolved_key_is_masked_wherever_it_appears(tmp_path: Path) -> None:
    from autolabel.settings.secrets import redact, redact_argv

    secret = "profile-key-" + "k" * 31
    env = _credentials(tmp_path, f"[default]\nprofile = team\n\n[team]\nkey = {secret}\norg = o\n")
    assert resolve_connection(env=env, cwd=tmp_path).sources["api_key"].endswith("'team'")
    assert redact(f"GET https://x?k={secret.upper()} failed") == "GET https://x?k=*** failed"
    assert redact_argv(["run", "--ap", "typed-key-123", "--name", f"{secret}-x"]) == [
        "run", "--ap", "***", "--name", "***-x",
    ]  # fmt: skip

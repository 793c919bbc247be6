"""The command line against careless and hostile input: each case ends in one clear line
with the README's exit code, and the API key never shows, however it is spelled."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autolabel.cli import build_parser, main
from autolabel.emulator import EmulatorHandle
from autolabel.ledger import ledger_path


def _env(emulator: EmulatorHandle, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("REDBRICK_")},
        "REDBRICK_URL": emulator.url,
        "REDBRICK_ORG_ID": emulator.org_id,
        "REDBRICK_PROJECT_ID": emulator.project_id,
        **extra,
    }


def _autolabel(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autolabel", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.fixture
def connected(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> EmulatorHandle:
    """The emulator, its connection exported in the environment as a user does, the current
    folder a clean one and no RedBrick CLI profile of this machine."""
    for name, value in _env(emulator, REDBRICK_API_KEY=emulator.api_key).items():
        if name.startswith("REDBRICK_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return emulator


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


# -- the key, in every spelling -----------------------------------------------------------


def _leaks(key: str, folder: Path, *texts: str) -> list[str]:
    """Where the key (in any letter case) shows: output texts, or files under ``folder``."""
    found = [f"output {i}" for i, text in enumerate(texts) if key.lower() in text.lower()]
    for path in folder.rglob("*"):
        if path.is_file() and key.lower().encode() in path.read_bytes().lower():
            found.append(str(path.relative_to(folder)))
    return found


#: How the key reaches the command line, and the exit code: the exact flag works; an
#: abbreviation is refused (exit 2) -- its error echoes the command line; a value that
#: contains the key is masked wherever it is shown.
SPELLINGS = {
    "--api-key KEY": (["--api-key", "{key}"], 0),
    "--api-key=KEY": (["--api-key={key}"], 0),
    "--api KEY": (["--api", "{key}"], 2),
    "--api-k KEY": (["--api-k", "{key}"], 2),
    "--ap=KEY": (["--ap={key}"], 2),
    "--name KEY-...": (["--api-key", "{key}", "--name", "{key}-x"], 0),
    "--url ...?k=KEY": (["--api-key", "{key}", "--url", "{url}/?k={key}"], 3),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_the_key_is_in_no_output_and_no_file_for_any_spelling(
    emulator: EmulatorHandle, tmp_path: Path, spelling: str
) -> None:
    words, expected = SPELLINGS[spelling]
    key = emulator.api_key
    if key.startswith("-") and "{key}" in words:  # argparse takes it for a flag: refused
        expected = 2
    tmp_path = tmp_path / "user"  # the emulator's own data folder lies beside it
    tmp_path.mkdir()
    given = [w.format(key=key, url=emulator.url) for w in words]
    env = _env(emulator)  # the key only on the command line
    ran = _autolabel("run", "--dry-run", "--limit", "1", *given, env=env, cwd=tmp_path)
    assert ran.returncode == expected, ran.stderr
    outputs = [ran.stdout, ran.stderr]
    if expected == 2 and "--api-key" not in words:
        assert "unrecognized arguments" in ran.stderr and "***" in ran.stderr
    if expected == 0:
        status = _autolabel("status", "--json", env=env, cwd=tmp_path)
        report = _autolabel("report", env=env, cwd=tmp_path)
        assert status.returncode == 0 and report.returncode == 0, status.stderr + report.stderr
        command = json.loads(status.stdout)["last_run"]["command"]
        assert "***" in " ".join(command)
        assert (tmp_path / "autolabel-work" / "report.html").is_file()
        outputs += [status.stdout, status.stderr, report.stdout, report.stderr]
    assert _leaks(key, tmp_path, *outputs) == []


def test_no_parser_takes_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10 and all(not p.allow_abbrev for p in parsers)
    for argv in (
        ["run", "--dry-r"],
        ["review", "--auto", "--min-d", "0.5"],
        ["emulator", "serve", "--data", "x", "--po", "1"],
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


# -- Rich markup in names and reasons ------------------------------------------------------


@pytest.mark.parametrize("quiet", [False, True])
def test_task_names_with_rich_markup_are_printed_as_text(
    connected: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    quiet: bool,
) -> None:
    """A failed ``[/red]evil`` and a skipped ``[bold]x[/`` task: ``run`` and ``status`` go on
    and print the names as they are."""
    emulator = connected
    failing, skipped, _ = emulator.task_ids()
    emulator.emulator.store.update_task(failing, name="[/red]evil")
    emulator.emulator.store.update_task(skipped, name="[bold]x[/ :smile:")
    record = emulator.task(failing)
    emulator.emulator.blobs.write(record.items[0], b"garbage", content_type=None, encoding=None)
    emulator.assign(skipped, emulator.human_email)  # a person labelled it: left alone
    emulator.as_user(emulator.human_email).save_labels(skipped, labels=[{"category": "Liver"}])
    emulator.assign(skipped, emulator.key_user_id)
    monkeypatch.setenv("COLUMNS", "200")  # whole names in the status table

    assert main(["run", "--dry-run", *(["--quiet"] if quiet else [])]) == 1
    err = capsys.readouterr().err
    assert "failed  [/red]evil" in err and "skipped [bold]x[/ :smile:" in err
    assert "done 1" in err
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "[/red]evil" in out and failing in out


# -- usage and configuration errors: exit 2, one line naming the fix ----------------------


def test_review_by_hand_names_its_tasks_and_a_reject_says_why(
    connected: EmulatorHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator = connected
    queued = emulator.task_ids()[0]
    actor = emulator.as_user(emulator.key_user_id)
    actor.save_labels(queued, labels=[{"category": "Liver"}])
    actor.submit(queued)
    emulator.assign(queued, emulator.key_user_id)
    assert emulator.task(queued).stage_name == "Review_1"

    assert main(["review", "--reject", "--comment", "redo"]) == 2
    assert "--task-id ID (repeatable), or add --all" in capsys.readouterr().err
    assert main(["review", "--accept"]) == 2
    assert main(["review", "--reject", "--task-id", queued]) == 2
    assert "--reject needs --comment TEXT" in capsys.readouterr().err
    assert emulator.task(queued).stage_name == "Review_1"  # nothing was decided
    assert main(["review", "--reject", "--all", "--comment", "redo the liver"]) == 0
    assert "rejected" in capsys.readouterr().out
    assert emulator.task(queued).stage_name == "Label"


@pytest.mark.usefixtures("connected")
def test_unknown_stage_lists_the_projects_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--dry-run", "--stage", "NoSuchStage"]) == 2
    err = capsys.readouterr().err
    assert "there is no stage 'NoSuchStage'" in err and "its label stages: Label" in err
    assert main(["run", "--dry-run", "--stage", "Review_1"]) == 2
    assert "'Review_1' is not a label stage" in capsys.readouterr().err
    assert main(["review", "--auto", "--stage", "Label"]) == 2
    assert "its review stages: Review_1" in capsys.readouterr().err
    assert not ledger_path(tmp_path / "autolabel-work").exists()
    assert main(["watch", "--stage", "NoSuchStage", "--max-polls", "1"]) == 2
    assert "its label stages: Label" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "code", "says"),
    [
        ("--url", "{url}/some/path", 3, "API endpoint not found"),
        ("--url", "http://127.0.0.1:{port}", 2, "use http://localhost:{port}"),
        ("--project", "00000000-0000-4000-8000-000000000000", 2, "check the organization id"),
        ("--org", "00000000-0000-4000-8000-000000000000", 2, "check the organization id"),
        ("--project", "not-a-project", 2, "'not-a-project' (from --project) is not a UUID"),
    ],
)
def test_connection_mistakes_exit_with_the_documented_code(
    connected: EmulatorHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    code: int,
    says: str,
) -> None:
    emulator = connected
    port = emulator.url.rsplit(":", 1)[1]
    given = value.format(url=emulator.url, port=port)
    assert main(["run", "--dry-run", flag, given]) == code
    err = capsys.readouterr().err
    assert says.format(port=port) in err and err.count("\n") == 1, err


def test_localhost_url_works_and_a_loopback_ip_is_refused_not_rewritten(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """``http://127.0.0.1`` would be sent over https (as RedBrick's SDK does for any url
    without ``localhost``) and fail on TLS: it is refused with the url to use instead."""
    port = emulator.url.rsplit(":", 1)[1]
    env = _env(emulator, REDBRICK_API_KEY=emulator.api_key)
    refused = _autolabel(
        "run", "--dry-run", env={**env, "REDBRICK_URL": f"http://127.0.0.1:{port}"}, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert f"use http://localhost:{port}" in refused.stderr and "SSLError" not in refused.stderr
    ran = _autolabel("run", "--dry-run", "--limit", "1", "--json", env=env, cwd=tmp_path)
    assert ran.returncode == 0 and json.loads(ran.stdout)["counts"]["done"] == 1


@pytest.mark.usefixtures("connected")
def test_reannotate_names_a_task_id_that_is_no_uuid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["reannotate", "--task-id", "not-a-uuid"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "'not-a-uuid' is not a task id" in err and "GraphQL" not in err


@pytest.mark.usefixtures("connected")
def test_non_utf8_config_file_is_a_config_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "autolabel.toml").write_bytes(b'[run]\nmodel = "ct-thr\xe9shold"\n')
    assert main(["run", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'autolabel.toml'} is not UTF-8 text" in err and "save it as UTF-8" in err


@pytest.mark.usefixtures("connected")
def test_unwritable_out_stops_before_any_task_is_fetched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "results"
    assert main(["run", "--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write in the --out folder {out}" in err
    assert not ledger_path(tmp_path / "autolabel-work").exists()  # no task was fetched


@pytest.mark.parametrize(
    "argv",
    [
        ["emulator", "serve", "--data", "x", "--port", "99999"],
        ["emulator", "serve", "--data", "x", "--port", "http"],
        ["demo", "--port", "-1"],
    ],
)
def test_a_port_out_of_range_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "is not a port: give 0..65535" in capsys.readouterr().err

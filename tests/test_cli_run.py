"""The command line as a user meets it: exit codes, JSON, the key never shown, watch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle


def _env(emulator: EmulatorHandle, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDBRICK_URL": emulator.url,
        "REDBRICK_ORG_ID": emulator.org_id,
        "REDBRICK_PROJECT_ID": emulator.project_id,
        "REDBRICK_API_KEY": emulator.api_key,
        **extra,
    }


def _autolabel(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autolabel", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_run_json_summary_and_exit_zero_from_environment_settings(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    result = _autolabel("run", "--json", env=_env(emulator), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["done"] == 3 and summary["mode"] == "draft"
    assert [s["stage"] for s in summary["stages"]] == ["fetch", "infer", "write"]
    assert all(s["tasks"] == 3 for s in summary["stages"])
    assert (tmp_path / "autolabel-work" / "ledger.sqlite").is_file()
    assert emulator.api_key not in result.stdout + result.stderr


def test_human_output_has_progress_summary_and_where_results_are(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    result = _autolabel("run", "--dry-run", "--out", "previews", env=_env(emulator), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done 3" in result.stderr and "results: previews" in result.stderr
    assert len(list((tmp_path / "previews").glob("*/series-0-preview.png"))) == 3
    assert emulator.api_key not in result.stdout + result.stderr


def test_missing_settings_exit_2_naming_each_way_to_give_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDBRICK_")}
    env["HOME"] = str(tmp_path)  # no RedBrick CLI profile either
    result = _autolabel("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "REDBRICK_API_KEY" in result.stderr and "--org" in result.stderr


def test_refused_key_exits_3_without_printing_it(emulator: EmulatorHandle, tmp_path: Path) -> None:
    wrong = "x" * 43
    result = _autolabel("run", env=_env(emulator, REDBRICK_API_KEY=wrong), cwd=tmp_path)
    assert result.returncode == 3
    assert wrong not in result.stdout + result.stderr
    assert "error" in result.stderr


def test_unreachable_redbrick_exits_3(emulator: EmulatorHandle, tmp_path: Path) -> None:
    env = _env(emulator, REDBRICK_URL="http://localhost:9")  # nothing listens on port 9
    result = _autolabel("run", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "localhost:9" in result.stderr


def test_some_tasks_failed_exits_1_and_status_lists_them(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = emulator.task(emulator.task_ids()[1])
    emulator.emulator.blobs.write(record.items[0], b"garbage", content_type=None, encoding=None)
    work = str(tmp_path / "work")
    base = ["--url", emulator.url, "--org", emulator.org_id, "--project", emulator.project_id]
    os.environ["REDBRICK_API_KEY"] = emulator.api_key
    try:
        assert main(["run", *base, "--work", work, "--quiet"]) == 1
    finally:
        del os.environ["REDBRICK_API_KEY"]
    capsys.readouterr()
    assert main(["status", "--work", work, "--json"]) == 1
    status = json.loads(capsys.readouterr().out)
    assert json.dumps(status).count(record.task_id) >= 1
    assert emulator.api_key not in json.dumps(status)


def test_watch_prelabels_new_assignments_and_stops_cleanly_on_sigterm(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    late = emulator.task_ids()[2]
    emulator.assign(late, None)  # not yet assigned to the key
    process = subprocess.Popen(
        [sys.executable, "-m", "autolabel", "watch", "--interval", "0.5", "--json"],
        env=_env(emulator), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        saves = "putManualLabelingTaskAndLabels"
        while sum(emulator.write_counts(saves).values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emulator.write_count(late, saves) == 0
        emulator.assign(late, emulator.key_user_id)  # a new task arrives
        while emulator.write_count(late, saves) < 1:
            assert time.monotonic() < deadline, "watch never picked up the new task"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "watch stopped" in err
    polls = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sum(p["done"] for p in polls) == 3
    assert emulator.api_key not in out + err

"""``autolabel demo``: one command does the whole job on a local RedBrick, and leaves the
emulator state, the ledger and a report that show it -- submits and drafts, a colleague's
correction, an automatic review that accepts and rejects with reasons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report import decode_images, needs_chromium, parse, screenshot

from autolabel.cli import main
from autolabel.cli.demo import MARKER, DemoOptions, run_demo
from autolabel.emulator import serve_in_thread
from autolabel.ledger import Ledger, ledger_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``autolabel demo --out DIR`` with its defaults, as the README runs it."""
    out = tmp_path_factory.mktemp("demo") / "autolabel-demo"
    capture = tmp_path_factory.mktemp("demo-output") / "stdout.txt"
    command = [sys.executable, "-m", "autolabel", "demo", "--out", str(out)]
    # The environment's bin on PATH but not activated, as ./dev/demo.sh runs it, from a
    # folder of its own (so the commands it prints must work from there).
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=out.parent
    )
    capture.write_text(finished.stdout)
    return {"out": out, "code": finished.returncode, "stdout": finished.stdout,
            "stderr": finished.stderr}  # fmt: skip


def test_demo_exits_zero_and_says_where_everything_is(demo: dict[str, Any]) -> None:
    """The summary names the report, the status command and the results folder."""
    assert demo["code"] == 0, demo["stderr"]
    out = demo["out"]
    text = demo["stdout"]
    assert f"report   {out / 'report.html'}" in text
    assert f"autolabel status --work {out / 'work'}" in text
    assert "2 accepted, 1 rejected" in text
    assert "Dice below 0.80 for Lung" in text
    for part in ("emulator", "work", "results", "report.html", MARKER):
        assert (out / part).exists(), part


def test_demo_prints_next_commands_that_work_in_a_fresh_shell(demo: dict[str, Any]) -> None:
    """The ``ledger`` and ``again`` lines are commands a newcomer can paste into a new shell
    (no virtual environment on its PATH) and they work as printed."""
    lines = {line.split()[0]: line.split(None, 1)[1] for line in demo["stdout"].splitlines()
             if line.strip().startswith(("ledger ", "again "))}  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # this checkout, as the demo ran it
    for name in ("ledger", "again"):
        command = lines[name].split("  (")[0]
        done = subprocess.run(["bash", "--noprofile", "--norc", "-c", command], env=env,
                              cwd=demo["out"].parent, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert (demo["out"].parent / "my-report.html").is_file()


def test_demo_leaves_submits_drafts_and_review_decisions_in_the_emulator(
    demo: dict[str, Any],
) -> None:
    """In the emulator: two tasks accepted into Ground Truth, the colleague's corrected task
    rejected back to Label with the reason, one draft saved by the key waiting in Label."""
    with serve_in_thread(demo["out"] / "emulator") as emu:
        tasks = {t.name: t for t in emu.tasks()}
        assert sorted(tasks) == [f"phantom-{i:03d}" for i in range(4)]
        done = sorted(n for n, t in tasks.items() if t.stage_name == "END")
        assert done == ["phantom-000", "phantom-001"]
        corrected, draft = tasks["phantom-002"], tasks["phantom-003"]
        assert corrected.stage_name == "Label" and corrected.assigned_to != emu.key_user_id
        reviews = [
            e for e in emu.events(corrected.task_id) if e.accepted and e.stage_name == "Review_1"
        ]
        assert reviews, "the review decision is recorded"
        history = emu.label_history(corrected.task_id)
        assert {h.created_by for h in history} >= {emu.key_user_id}
        assert history[-1].created_by != emu.key_user_id  # the colleague's labels
        assert draft.stage_name == "Label" and draft.assigned_to == emu.key_user_id
        latest = emu.latest_labels(draft.task_id)
        assert latest is not None and not latest.finished
        assert latest.created_by == emu.key_user_id
        for name in done:
            first = emu.label_history(tasks[name].task_id)[0]
            assert first.finished and first.created_by == emu.key_user_id


def test_demo_ledger_holds_the_submit_run_and_the_draft_run(demo: dict[str, Any]) -> None:
    """The work folder's ledger has three runs: two tasks submitted, two drafts saved, and
    the organ model's dry run on the draft still queued for the key."""
    with Ledger(ledger_path(demo["out"] / "work"), create=False) as ledger:
        runs = ledger.runs()
        assert sorted(r.mode for r in runs) == ["draft", "dry-run", "final"]
        assert all(r.status == "finished" for r in runs)
        organs = next(r for r in runs if r.mode == "dry-run")
        assert organs.model is not None and organs.model.name == "phantom-unet"
        assert ledger.summary().counts == {"submitted": 2, "draft_saved": 2, "dry_run": 1}


def test_demo_report_shows_both_outcomes_the_review_and_decodable_previews(
    demo: dict[str, Any],
) -> None:
    """The report covers both runs and the review; its four previews decode as images."""
    html = (demo["out"] / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    text = " ".join(page.text)
    for words in ("submitted", "draft saved", "accepted", "rejected", "Dice below 0.80 for Lung"):
        assert words in text, words
    for i in range(4):
        assert f"phantom-{i:03d}" in text
    images = decode_images(page)
    assert len(images) == 5  # four ct-threshold previews and the organ model's dry run
    assert all(np.asarray(i.convert("L")).std() > 10 for i in images)
    assert page.scripts == 0 and page.references == []


@needs_chromium
def test_demo_report_renders_in_chromium(demo: dict[str, Any], tmp_path: Path) -> None:
    """Chromium draws the demo report: a non-blank page with the review table's badges."""
    shot = screenshot(demo["out"] / "report.html", tmp_path / "demo.png", tmp_path)
    pixels = np.asarray(shot.convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.std() > 20
    green = np.all(np.abs(pixels - (27, 127, 59)) < 12, axis=1).sum()
    red = np.all(np.abs(pixels - (180, 35, 24)) < 12, axis=1).sum()
    assert green > 200 and red > 100, (green, red)  # accepted / rejected badges drawn


def test_demo_again_starts_clean_and_never_empties_a_foreign_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second demo into the same folder starts from scratch (one set of tasks, one
    ledger run per step);
    a folder the demo did not make is refused (exit 2) and left as it was."""
    out = tmp_path / "demo"
    options = DemoOptions(out_dir=out, studies=2, shape=(48, 48, 24), organs_model=None)
    first = run_demo(options)
    lines: list[str] = []
    second = run_demo(options, on_step=lines.append)
    assert lines[0] == f"removed the previous demo in {out}"
    assert first.url != "" and len(second.tasks) == 2
    with Ledger(ledger_path(second.work_dir), create=False) as ledger:
        assert len(ledger.runs()) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(foreign)]) == 2
    assert "not made by `autolabel demo`" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["precious.txt"]


def test_demo_keep_serving_prints_a_connection_that_autolabel_run_can_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--keep-serving`` leaves the emulator up with the exports it prints; ``autolabel run
    --dry-run`` with them pre-labels the task still queued for the key; Ctrl-C stops it."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "autolabel", "demo", "--out", str(out), "--keep-serving"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        exports: dict[str, str] = {}
        for line in server.stdout:
            for word in line.replace("\\", " ").split():
                name, _, value = word.partition("=")
                if name.startswith("REDBRICK_") and value:
                    exports[name] = value
            if "autolabel run --dry-run" in line:
                break
        assert set(exports) == {"REDBRICK_URL", "REDBRICK_ORG_ID", "REDBRICK_PROJECT_ID",
                                "REDBRICK_API_KEY"}  # fmt: skip
        connection = json.loads((out / "emulator" / "connection.json").read_text())
        assert exports["REDBRICK_API_KEY"] == connection["api_key"]  # the demo key only
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        assert main(["run", "--dry-run", "--work", "demo-work", "--json", "--quiet"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert [t["status"] for t in summary["tasks"]] == ["dry_run"]
        assert summary["tasks"][0]["task_name"] == "phantom-003"  # the draft, still queued
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=60)
    assert server.returncode == 0
    assert "stopped the local RedBrick" in rest

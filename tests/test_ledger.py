"""The ledger: durability across kill -9, concurrent writers, skip logic, bad files, status."""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from autolabel.cli.commands import status
from autolabel.errors import ConfigError, ImageError, LedgerError
from autolabel.ledger import SCHEMA_VERSION, Ledger, ModelKey, TaskState, ledger_path

MODEL = ModelKey("phantom-unet", "1.0", "sha256:aaaa")
REPO = Path(__file__).resolve().parents[1]

# A small pipeline loop that follows the ledger's write protocol. The "platform" is a file
# with one line per write that landed; a write is an append + fsync, so it survives a kill.
WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from autolabel.ledger import Ledger, ModelKey

    ledger_file, platform_file, n_tasks, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = ModelKey("phantom-unet", "1.0", "sha256:aaaa")

    def landed():
        if not os.path.exists(platform_file):
            return set()
        with open(platform_file) as f:
            return {line.strip() for line in f}

    ledger = Ledger(ledger_file)
    run = ledger.start_run(mode="final", command=["worker"], model=model)
    for event in ledger.in_doubt_writes(model):
        # Re-read the truth: did the write land before the previous run died?
        if event.task_id in landed():
            run.record(event.task_id, "submitted", detail={"resolved": "found on platform"})
    for n in range(n_tasks):
        task = f"task-{n:03d}"
        if ledger.is_done(task, model, "final"):
            continue
        for state in ("fetched", "predicted", "converted"):
            run.record(task, state, task_name=f"CT {n}", detail={"seconds": 0.01})
        run.record(task, "writing")
        if kill_at == f"before-write:{task}":
            os.kill(os.getpid(), signal.SIGKILL)
        fd = os.open(platform_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (task + "\\n").encode())
        os.fsync(fd)
        os.close(fd)
        if kill_at == f"after-write:{task}":
            os.kill(os.getpid(), signal.SIGKILL)
        run.record(task, "submitted")
        print(f"committed {task}", flush=True)
    run.finish()
    print("done", flush=True)
    """
)


def _worker(tmp_path: Path, kill_at: str = "-", n_tasks: int = 30) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [str(ledger_path(tmp_path)), str(tmp_path / "platform.txt"), str(n_tasks), kill_at]
    return subprocess.Popen(
        [sys.executable, str(script), *args], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


def test_kill_9_at_any_point_then_rerun_writes_every_task_exactly_once(tmp_path: Path) -> None:
    """Committed events survive SIGKILL; in-doubt writes are found; each task lands once."""
    # 1. Killed after the write landed, before 'submitted' was recorded.
    proc = _worker(tmp_path, "after-write:task-003")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    with Ledger(ledger_path(tmp_path)) as ledger:
        assert [e.task_id for e in ledger.in_doubt_writes()] == ["task-003"]
        assert ledger.is_done("task-002", MODEL, "final")
        assert not ledger.is_done("task-003", MODEL, "final")
        latest = ledger.latest("task-003", MODEL)
        assert latest is not None and latest.state is TaskState.WRITING

    # 2. Killed after recording the intent, before the write was sent.
    proc = _worker(tmp_path, "before-write:task-007")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    with Ledger(ledger_path(tmp_path)) as ledger:
        assert [e.task_id for e in ledger.in_doubt_writes()] == ["task-007"]
        resolved = ledger.latest("task-003", MODEL)
        assert resolved is not None and resolved.detail == {"resolved": "found on platform"}

    # 3. Killed from outside at an arbitrary moment, mid-loop.
    proc = _worker(tmp_path)
    assert proc.stdout is not None
    committed = []
    for line in proc.stdout:
        committed.append(line.split()[1])
        if len(committed) == 5:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    with Ledger(ledger_path(tmp_path)) as ledger:
        for task in committed:  # everything the worker saw committed is on disk
            assert ledger.is_done(task, MODEL, "final")

    # 4. A clean run finishes the rest.
    proc = _worker(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.endswith("done\n")

    writes = (tmp_path / "platform.txt").read_text().split()
    assert sorted(writes) == [f"task-{n:03d}" for n in range(30)]
    with Ledger(ledger_path(tmp_path)) as ledger:
        assert ledger.in_doubt_writes() == []
        assert ledger.summary().counts == {"submitted": 30}
        assert len(ledger.runs()) == 4
    db = sqlite3.connect(ledger_path(tmp_path))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


WRITER = textwrap.dedent(
    """
    import sys
    from autolabel.ledger import Ledger, ModelKey
    ledger = Ledger(sys.argv[1])
    run = ledger.start_run(mode="draft", model=ModelKey("m", sys.argv[2]))
    for n in range(int(sys.argv[3])):
        run.record(f"p{sys.argv[2]}-{n}", "queued")
    run.finish()
    """
)


def test_concurrent_writers_from_threads_and_two_processes(tmp_path: Path) -> None:
    """Two processes and four threads append at once; no event is lost or refused."""
    path = ledger_path(tmp_path)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ledger = Ledger(path)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(path), version, "80"], cwd=REPO)
        for version in ("a", "b")
    ]
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            run = ledger.start_run(mode="final", model=ModelKey("m", f"t{thread}"))
            for n in range(40):
                run.record(f"t{thread}-{n}", "fetched")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert errors == []
    summary = ledger.summary()
    assert summary.counts == {"queued": 160, "fetched": 160}
    assert len(summary.runs) == 6
    ledger.close()


def test_skip_logic_is_per_model_version_and_mode(tmp_path: Path) -> None:
    """Same version done -> done; a new version, new weights or a stricter mode -> redo."""
    with Ledger(ledger_path(tmp_path)) as ledger:
        run = ledger.start_run(mode="draft", model=MODEL)
        run.record("t1", "writing")
        run.record("t1", "draft_saved")
        assert ledger.is_done("t1", MODEL, "draft")
        assert not ledger.is_done("t1", MODEL, "final")  # --finalize still submits it
        assert not ledger.is_done("t1", ModelKey("phantom-unet", "1.1", "sha256:aaaa"), "draft")
        assert not ledger.is_done("t1", ModelKey("phantom-unet", "1.0", "sha256:bbbb"), "draft")
        assert not ledger.is_done("t2", MODEL, "draft")

        final = ledger.start_run(mode="final", model=MODEL)
        final.record("t1", "writing")
        final.record("t1", "submitted")
        assert ledger.is_done("t1", MODEL, "final") and ledger.is_done("t1", MODEL, "draft")

        # --force redoes it; a failure of the redo does not forget the earlier submit.
        forced = ledger.start_run(mode="final", model=MODEL, options={"force": True})
        forced.record("t1", "fetched")
        forced.record("t1", "failed", error=ImageError("series t1/CT: 2 slices missing"))
        assert ledger.is_done("t1", MODEL, "final")
        assert ledger.done_task_ids(MODEL, "draft", task_ids=["t1", "t2"]) == {"t1"}
        # A dry run never counts as a write, and a written task is not a dry run.
        assert not ledger.is_done("t1", MODEL, "dry-run")


def test_write_protocol_is_enforced(tmp_path: Path) -> None:
    """A written state needs a recorded intent; dry runs cannot record writes."""
    with Ledger(ledger_path(tmp_path)) as ledger:
        run = ledger.start_run(mode="draft", model=MODEL)
        with pytest.raises(ValueError, match="writing"):
            run.record("t1", "draft_saved")
        with pytest.raises(ValueError, match="dry run"):
            run.record("t1", "dry_run")
        with pytest.raises(ValueError, match="error"):
            run.record("t1", "failed")
        dry = ledger.start_run(mode="dry-run", model=MODEL)
        with pytest.raises(ValueError, match="dry run"):
            dry.record("t1", "writing")
        run.record("t2", "writing")
        dry.record("t2", "dry_run")  # a later dry run does not hide the write in doubt
        assert [e.task_id for e in ledger.in_doubt_writes()] == ["t2"]
        assert ledger.history("t1") == []  # refused events left nothing behind


def test_events_are_append_only(tmp_path: Path) -> None:
    """The events table refuses UPDATE and DELETE, even from outside autolabel."""
    with Ledger(ledger_path(tmp_path)) as ledger:
        ledger.start_run(mode="draft", model=MODEL).record("t1", "queued")
    db = sqlite3.connect(ledger_path(tmp_path))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE events SET state = 'submitted'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM events")
    db.close()


def test_summary_counts_failures_and_timings_per_run_and_overall(tmp_path: Path) -> None:
    """Latest state per task counts once; failures keep type and message; timings add up."""
    with Ledger(ledger_path(tmp_path)) as ledger:
        first = ledger.start_run(mode="draft", command=["autolabel", "run"], model=MODEL)
        first.record("t1", "fetched", task_name="CT 1", detail={"seconds": 2.0})
        first.record("t1", "failed", task_name="CT 1", error=ImageError("truncated pixel data"))
        first.record("t2", "fetched", detail={"seconds": 4.0})
        first.record("t2", "skipped", detail={"reason": "task left the Label stage"})
        first.finish()
        second = ledger.start_run(mode="draft", model=MODEL)
        second.record("t1", "writing")
        second.record("t1", "draft_saved", detail={"seconds": 0.5})
        second.finish("interrupted")

        overall = ledger.summary()
        assert overall.counts == {"draft_saved": 1, "skipped": 1}
        assert overall.failures == ()
        assert overall.timings["fetched"].count == 2
        assert overall.timings["fetched"].mean_seconds == pytest.approx(3.0)
        assert overall.timings["fetched"].max_seconds == pytest.approx(4.0)

        one = ledger.summary(first.run_id)
        assert one.counts == {"failed": 1, "skipped": 1}
        (failure,) = one.failures
        assert (failure.task_id, failure.task_name) == ("t1", "CT 1")
        assert (failure.error_type, failure.error_message) == ("ImageError", "truncated pixel data")
        runs = ledger.runs()
        assert [r.run_id for r in runs] == [second.run_id, first.run_id]
        assert runs[0].status == "interrupted" and runs[1].command == ("autolabel", "run")


def test_garbage_file_raises_ledger_error(tmp_path: Path) -> None:
    """A file that is not SQLite gives LedgerError naming the file and what to do."""
    path = ledger_path(tmp_path)
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(LedgerError, match=r"ledger\.sqlite.*move it aside"):
        Ledger(path)


def test_damaged_pages_raise_ledger_error(tmp_path: Path) -> None:
    """A ledger whose pages were overwritten fails with LedgerError, not sqlite3 errors."""
    path = ledger_path(tmp_path)
    with Ledger(path) as ledger:
        run = ledger.start_run(mode="draft", model=MODEL)
        for n in range(300):
            run.record(f"t{n}", "fetched", detail={"note": "x" * 200})
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # keep the header, wreck every other page
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="move it aside"):
        Ledger(path).summary()


def test_foreign_sqlite_file_and_missing_ledger(tmp_path: Path) -> None:
    """Someone else's SQLite file is refused; status on an empty folder says nothing ran."""
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE photos (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="not an autolabel ledger"):
        Ledger(other)
    with pytest.raises(LedgerError, match="nothing has run"):
        Ledger(tmp_path / "empty" / "ledger.sqlite", create=False)
    assert not (tmp_path / "empty").exists()


def test_schema_version_is_stamped_and_newer_versions_refused(tmp_path: Path) -> None:
    """New ledgers carry the schema version; one from a newer autolabel is refused."""
    path = ledger_path(tmp_path)
    Ledger(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="upgrade autolabel"):
        Ledger(path)


def _status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    status.register(parser.add_subparsers())
    args = parser.parse_args(["status", *argv])
    code: int = args.handler(args)
    return code


def test_status_json_reports_counts_failures_and_last_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`autolabel status --json` gives counts, failures with reasons, and exit 1 on failures."""
    with Ledger(ledger_path(tmp_path)) as ledger:
        run = ledger.start_run(mode="final", command=["autolabel", "run"], model=MODEL)
        run.record("t1", "writing", task_name="CT 1")
        run.record("t1", "submitted", task_name="CT 1")
        run.record("t2", "failed", task_name="CT 2", error=ImageError("no pixel data"))
        run.record("t3", "writing", task_name="CT 3")
        run.finish()
    assert _status(["--work", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"failed": 1, "submitted": 1, "writing": 1}
    assert report["failures"][0]["task_id"] == "t2"
    assert report["failures"][0]["error_message"] == "no pixel data"
    assert [e["task_id"] for e in report["in_doubt_writes"]] == ["t3"]
    assert report["last_run"]["run_id"] == run.run_id
    assert report["last_run"]["command"] == ["autolabel", "run"]

    monkeypatch.setenv("COLUMNS", "200")  # rich folds long cells at its default width of 80
    assert _status(["--work", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "no pixel data" in text and "t3" in text and run.run_id in text


def test_api_key_never_reaches_the_ledger_file(tmp_path: Path) -> None:
    """A key given with --api-key, or in the options, is stored as *** only."""
    key = "rb-secret-key-0123456789"
    with Ledger(ledger_path(tmp_path)) as ledger:
        run = ledger.start_run(
            mode="draft",
            command=["autolabel", "run", "--api-key", key, f"--api-key={key}", "--org", "o"],
            options={"api_key": key, "stage": "Label", "weights_hash": ""},
            model=MODEL,
        )
        run.record("t1", "queued")
        (info,) = ledger.runs()
        assert info.command == (
            "autolabel",
            "run",
            "--api-key",
            "***",
            "--api-key=***",
            "--org",
            "o",
        )
        assert info.options == {"api_key": "***", "stage": "Label", "weights_hash": ""}
    for file in tmp_path.iterdir():
        assert key.encode() not in file.read_bytes()


def test_status_without_a_ledger_is_a_usage_error(tmp_path: Path) -> None:
    """`autolabel status` in a folder where nothing ran says so (exit 2 via ConfigError)."""
    with pytest.raises(ConfigError, match="nothing has run"):
        _status(["--work", str(tmp_path / "elsewhere")])

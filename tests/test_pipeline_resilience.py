"""Crashes and flaky networks: a run killed at any point and re-run writes every task
exactly once; injected faults end every task written or failed with a reason, none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.inference import load_model
from autolabel.pipeline import RunOptions, run
from autolabel.redbrick import RetryPolicy, get_project


def _start_run(emulator: EmulatorHandle, work: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDBRICK_URL": emulator.url,
        "REDBRICK_ORG_ID": emulator.org_id,
        "REDBRICK_PROJECT_ID": emulator.project_id,
        "REDBRICK_API_KEY": emulator.api_key,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "autolabel", "run", "--work", str(work), "--quiet",
         "--fetch-workers", "1", "--write-workers", "1", "--settle-window", "8"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill_when(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], limit: float = 60
) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended before the kill point: {process.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the kill point was never reached")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_writes_every_task_exactly_once(
    emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    emulator = emulator_factory(studies=6)
    work = tmp_path / "work"

    # 1. Killed while downloading the first task's images.
    slow_get = emulator.add_fault("storage:GET", "delay", delay_s=3.0, times=1)
    process = _start_run(emulator, work)
    _kill_when(process, lambda: slow_get.fired >= 1)
    emulator.clear_faults()
    assert sum(emulator.key_writes().values()) == 0

    # 2. Killed in the middle of a write: the server still takes the request after the
    #    client died, so the ledger is left with a write in doubt that did land.
    slow_put = emulator.add_fault("putTaskAndLabelsSDK", "delay", delay_s=1.5, times=1)
    process = _start_run(emulator, work)
    _kill_when(process, lambda: slow_put.fired >= 1)
    emulator.clear_faults()
    time.sleep(2.0)  # the delayed write lands on the server
    assert sum(emulator.key_writes().values()) >= 1

    # 3. Killed after a few more writes.
    already = sum(emulator.key_writes().values())
    process = _start_run(emulator, work)
    _kill_when(process, lambda: sum(emulator.key_writes().values()) >= already + 2)

    # 4. A clean re-run finishes the job.
    process = _start_run(emulator, work)
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)
    assert all(emulator.task(t).state == "STAGED" for t in emulator.task_ids())


FAULTS: list[dict[str, Any]] = [
    {"target": "storage:GET", "kind": "status", "status": 500, "rate": 0.3, "seed": 1},
    {"target": "storage:GET", "kind": "drop", "rate": 0.1, "seed": 2},
    {"target": "storage:PUT", "kind": "status", "status": 403, "rate": 0.3, "seed": 3},
    {"target": "taskSDK", "kind": "status", "status": 429, "retry_after": 0.2, "rate": 0.3, "seed": 4},
    {"target": "taskSDK", "kind": "status", "status": 502, "rate": 0.2, "seed": 5},
    {"target": "presignItemsSDK", "kind": "drop", "rate": 0.3, "seed": 6},
    {"target": "putTaskAndLabelsSDK", "kind": "drop", "rate": 0.3, "seed": 7},
    {"target": "putTaskAndLabelsSDK", "kind": "status", "status": 503, "rate": 0.2, "seed": 8},
    # Slower than the client's read timeout: the write lands but its answer is lost.
    {"target": "putTaskAndLabelsSDK", "kind": "delay", "delay_s": 2.5, "rate": 0.3, "seed": 9},
]  # fmt: skip


@pytest.mark.slow
def test_faults_at_30_percent_end_every_task_written_or_failed_never_twice(
    emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    emulator = emulator_factory(studies=8)
    for rule in FAULTS:
        emulator.add_fault(**{**rule, "times": None})
    model = load_model("ct-threshold", device="cpu")
    project = get_project(
        emulator.org_id,
        emulator.project_id,
        emulator.api_key,
        url=emulator.url,
        timeout=(2.0, 1.5),
        retry=RetryPolicy(attempts=4, backoff_base=0.05, backoff_max=0.5, retry_after_max=1.0),
    )
    # Replies lost to the 2.5 s delays land within 2.5 s: settle them within 6 s.
    options = RunOptions(work_dir=tmp_path / "work", previews=False, settle_window_s=6.0)
    with project:
        summary = run(project, model, options)
    writes = emulator.key_writes()
    assert len(summary.outcomes) == 8
    for outcome in summary.outcomes:
        assert outcome.status in ("draft_saved", "failed"), outcome
        if outcome.status == "draft_saved":
            assert writes[outcome.task_id] == 1, outcome
        else:
            # Failures come from the injected faults (statuses, drops, timeouts), not bugs.
            assert any(s in outcome.reason for s in ("HTTP", "timed out", "connection")), outcome
            assert writes[outcome.task_id] <= 1, outcome
    assert max(writes.values()) <= 1
    reasons = [o.reason for o in summary.failed]
    assert len(summary.done) >= 2, reasons  # retries carry tasks through the faults

    # Once the network heals, a re-run settles writes in doubt and finishes the rest.
    emulator.clear_faults()
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        rerun = run(p, model, options)
    assert rerun.exit_code == 0, rerun.to_dict()
    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)

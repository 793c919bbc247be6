"""The pipeline on Ray actors (one local Ray instance, 2 CPUs, shared by the module):
same results as a local run, lost actors cost no double write, a task that kills two
actors is recorded failed, and the key never reaches Ray's logs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.inference import load_model
from autolabel.ledger import Ledger, TaskState, ledger_path
from autolabel.pipeline import RunOptions, RunSummary, run
from autolabel.redbrick import get_project
from autolabel.settings import ConnectionSettings

ray = pytest.importorskip("ray")

from autolabel.pipeline.ray import RayOptions, run_on_ray  # noqa: E402
from autolabel.pipeline.ray.cluster import preserved_environment  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray instance for the module (starting Ray takes seconds)."""
    with preserved_environment():  # Ray leaves RAY_AUTH_MODE behind for later subprocesses
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        ray.shutdown()


def _connection(emulator: EmulatorHandle) -> ConnectionSettings:
    return ConnectionSettings(
        url=emulator.url,
        org_id=emulator.org_id,
        project_id=emulator.project_id,
        api_key=emulator.api_key,
    )


def _states(work: Path, task_ids: list[str]) -> dict[str, list[str]]:
    """Every task's ledger states, in order."""
    with Ledger(ledger_path(work), create=False) as ledger:
        return {t: [e.state.value for e in ledger.history(t)] for t in task_ids}


def _label_image(data: bytes) -> Any:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def _ray_run(
    emulator: EmulatorHandle, work: Path, cluster: RayOptions, model: str = "ct-threshold"
) -> RunSummary:
    options = RunOptions(work_dir=work, previews=False)
    return run_on_ray(_connection(emulator), model, options, cluster, device="cpu")


def _ray_workers() -> set[int]:
    """PIDs of the processes running TaskWorker actors (take those of other runs away)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::TaskWorker"):
                pids.add(int(entry.name))
    return pids


def _in_thread(target: Callable[[], RunSummary]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def body() -> None:
        try:
            result.append(target())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


def _wait_for(ready: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def test_a_ray_run_writes_what_a_local_run_writes(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """Same statuses, label files, segmentMaps, payloads and ledger states as a local run."""
    here, there = emulator_factory(studies=4), emulator_factory(studies=4)
    assert here.task_ids() == there.task_ids()
    model = load_model("ct-threshold", device="cpu")
    with get_project(here.org_id, here.project_id, here.api_key, url=here.url) as project:
        local = run(project, model, RunOptions(work_dir=tmp_path / "local", previews=False))
    scaled = _ray_run(there, tmp_path / "ray", RayOptions(actors=2))

    assert scaled.exit_code == local.exit_code == 0
    by_id = {o.task_id: o for o in local.outcomes}
    assert {o.task_id: o.status for o in scaled.outcomes} == {t: o.status for t, o in by_id.items()}
    assert here.key_writes() == there.key_writes() == dict.fromkeys(here.task_ids(), 1)
    for outcome in scaled.outcomes:
        task_id = outcome.task_id
        assert there.labels(task_id) == here.labels(task_id)
        (mine,), (theirs,) = there.label_files(task_id), here.label_files(task_id)
        a, b = _label_image(mine), _label_image(theirs)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert np.array_equal(a.affine, b.affine)
        payload = json.loads(Path(outcome.files["payload"]).read_text())
        expected = json.loads(Path(by_id[task_id].files["payload"]).read_text())
        assert [s["segmentMap"] for s in payload["series"]] == [
            s["segmentMap"] for s in expected["series"]
        ]
        assert outcome.volumes_ml == pytest.approx(by_id[task_id].volumes_ml)
    ids = here.task_ids()
    assert _states(tmp_path / "ray", ids) == _states(tmp_path / "local", ids)
    assert {o.worker for o in scaled.outcomes} == {w.name for w in scaled.workers}
    assert len(scaled.workers) == 2 and sum(w.tasks for w in scaled.workers) == 4
    assert [s.name for s in scaled.stages.stages] == ["fetch", "infer", "write"]  # type: ignore[union-attr]


def test_an_actor_killed_mid_run_has_its_tasks_written_once_by_others(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """SIGKILL of an actor's process while it downloads: its tasks re-run elsewhere, once."""
    emulator = emulator_factory(studies=6)
    slow = emulator.add_fault("storage:GET", "delay", delay_s=0.4, times=None)
    before = _ray_workers()
    thread, result = _in_thread(lambda: _ray_run(emulator, tmp_path / "work", RayOptions(actors=2)))
    _wait_for(
        lambda: slow.fired >= 2 and len(_ray_workers() - before) >= 2, "two actors downloading"
    )
    victim = min(_ray_workers() - before)
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    (summary,) = result
    assert isinstance(summary, RunSummary), summary

    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)
    assert [o.status for o in summary.outcomes] == ["draft_saved"] * 6
    (lost,) = [w for w in summary.workers if w.died]
    assert lost.requeued, "the killed actor held tasks"
    for task_id in lost.requeued:
        (outcome,) = [o for o in summary.outcomes if o.task_id == task_id]
        assert outcome.worker != lost.name
    assert len(summary.workers) == 3  # the lost actor was replaced


def test_an_actor_lost_during_a_write_that_lands_late_is_not_written_twice(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """The lost write lands after the driver found it missing and handed the task on: the
    guard before the next write compares against the first fetch's labels and records the
    landed write instead of sending a second one."""
    emulator = emulator_factory(studies=2)
    slow_put = emulator.add_fault("putTaskAndLabelsSDK", "delay", delay_s=2.0, times=1)
    cluster = RayOptions(actors=1, in_flight=1, in_doubt_grace_s=0.0)
    before = _ray_workers()
    thread, result = _in_thread(lambda: _ray_run(emulator, tmp_path / "work", cluster))
    _wait_for(lambda: slow_put.fired >= 1, "a write under way")
    (victim,) = _ray_workers() - before
    os.kill(victim, signal.SIGKILL)
    # The driver re-reads at once (no grace) and hands the task on; the replacement actor's
    # re-read is slowed down past the moment the lost write lands.
    _wait_for(lambda: bool(_ray_workers() - before - {victim}), "a replacement actor")
    emulator.add_fault("taskSDK", "delay", delay_s=2.5, times=1)
    thread.join(timeout=120)
    (summary,) = result
    assert isinstance(summary, RunSummary), summary

    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)
    assert sorted(o.status for o in summary.outcomes) == ["draft_saved"] * 2
    with Ledger(ledger_path(tmp_path / "work"), create=False) as ledger:
        resolved = [
            t
            for t in emulator.task_ids()
            if ledger.history(t)[-1].detail.get("resolved", "").startswith("the write of a lost")
        ]
    assert len(resolved) == 1


def _crash_card(folder: Path, target_sha256: str) -> Path:
    """A model card whose plug-in kills its process on one image (as an OOM kill would)."""
    folder.mkdir()
    (folder / "model.toml").write_text(
        'name = "crash-on-one"\nversion = "1.0.0"\nkind = "python"\nentry = "crash:predict"\n'
        'modality = "CT"\n[labels]\n1 = "body"\n[categories]\n1 = "Body"\n',
        encoding="utf-8",
    )
    (folder / "crash.py").write_text(
        "import hashlib, os\nimport numpy as np\n\n"
        "def predict(volume):\n"
        "    data = np.ascontiguousarray(volume.array).tobytes()\n"
        f"    if hashlib.sha256(data).hexdigest() == {target_sha256!r}:\n"
        "        os._exit(137)\n"
        "    return (np.asarray(volume.array) > -500).astype(np.uint8)\n",
        encoding="utf-8",
    )
    return folder / "model.toml"


def test_a_task_that_kills_two_actors_is_recorded_failed(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """Died on two actors: failed with the reason; nothing written for it; the rest done."""
    from autolabel.pipeline.fetch import load_task_series

    emulator = emulator_factory(studies=3)
    deadly = emulator.task_ids()[1]
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        (series,), _ = load_task_series(p, p.get_task(deadly), tmp_path / "dl")
    digest = hashlib.sha256(np.ascontiguousarray(series.volume.array).tobytes()).hexdigest()
    card = _crash_card(tmp_path / "crash", digest)

    summary = _ray_run(emulator, tmp_path / "work", RayOptions(actors=2), model=str(card))
    outcomes = {o.task_id: o for o in summary.outcomes}
    assert outcomes[deadly].status == "failed"
    assert outcomes[deadly].error_type == "WorkerLostError"
    assert "died 2 times" in outcomes[deadly].reason
    assert emulator.key_writes() == {t: int(t != deadly) for t in emulator.task_ids()}
    assert summary.exit_code == 1
    assert sum(1 for w in summary.workers if w.died) == 2
    with Ledger(ledger_path(tmp_path / "work"), create=False) as ledger:
        last = ledger.history(deadly)[-1]
    assert (last.state, last.error_type) == (TaskState.FAILED, "WorkerLostError")


def test_ctrl_c_on_a_cluster_run_finishes_tasks_in_hand_and_the_key_stays_out_of_ray(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """``autolabel run --ray ADDRESS`` joins the cluster; SIGINT stops it cleanly; a re-run
    finishes the job once; Ray's logs never contain the API key."""
    emulator = emulator_factory(studies=6)
    emulator.add_fault("storage:GET", "delay", delay_s=0.3, times=None)
    address = local_ray.get_runtime_context().gcs_address
    env = {
        **os.environ,
        "REDBRICK_URL": emulator.url,
        "REDBRICK_ORG_ID": emulator.org_id,
        "REDBRICK_PROJECT_ID": emulator.project_id,
        "REDBRICK_API_KEY": emulator.api_key,
    }
    work = tmp_path / "work"
    process = subprocess.Popen(
        [sys.executable, "-m", "autolabel", "run", "--work", str(work), "--json",
         "--device", "cpu", "--no-previews", "--ray", address, "--ray-actors", "1",
         "--ray-in-flight", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for(lambda: sum(emulator.key_writes().values()) >= 1, "a first write", limit=90)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()[-2000:]  # stopped: not everything done
    report = json.loads(out)
    written = emulator.key_writes()
    assert max(written.values()) == 1 and 1 <= sum(written.values()) < 6
    assert report["counts"]["done"] == sum(written.values())
    assert report["workers"][0]["tasks"] == report["counts"]["done"]
    with Ledger(ledger_path(work), create=False) as ledger:
        assert ledger.runs()[0].status == "interrupted"
        assert ledger.in_doubt_writes() == []

    emulator.clear_faults()
    again = _ray_run(emulator, work, RayOptions(actors=2))
    assert again.already_done == sum(written.values())
    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)

    session = Path(local_ray._private.worker._global_node.get_session_dir_path())
    key = emulator.api_key.encode()
    leaks = [p for p in session.rglob("*") if p.is_file() and key in p.read_bytes()]
    assert leaks == []


def test_a_ray_run_routes_by_confidence_as_a_local_run(
    local_ray: Any, emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """--finalize-above and --prioritize decide the same routes and priorities on Ray
    actors as on this machine: the flow decides on the driver, from the actors' confidence."""
    from test_routing import _card

    here, there = emulator_factory(), emulator_factory()
    sure, unsure, middle = sorted(t.name for t in here.tasks("Label"))
    scores = {
        sure: {"Lung": 0.97, "Bone": 0.95},
        unsure: {"Lung": 0.6, "Bone": 0.9},
        middle: {"Lung": 0.91, "Bone": 0.8},
    }
    card = str(_card(tmp_path / "sure", scores))
    routing: dict[str, Any] = {"finalize_above": 0.9, "prioritize": True, "previews": False}
    with get_project(here.org_id, here.project_id, here.api_key, url=here.url) as project:
        local = run(
            project,
            load_model(card, device="cpu"),
            RunOptions(work_dir=tmp_path / "local", **routing),
        )
    options = RunOptions(work_dir=tmp_path / "ray", **routing)
    scaled = run_on_ray(_connection(there), card, options, RayOptions(actors=2), device="cpu")

    def routes(summary: RunSummary) -> dict[str, tuple[str, str, float | None]]:
        return {o.task_name: (o.status, o.route, o.priority) for o in summary.outcomes}

    assert routes(scaled) == routes(local)
    assert routes(local) == {
        sure: ("submitted", "finalize", None),
        unsure: ("draft_saved", "draft", pytest.approx(0.4, abs=1e-3)),
        middle: ("draft_saved", "draft", pytest.approx(0.2, abs=1e-3)),
    }
    assert scaled.routes == local.routes == {"finalize": 1, "draft": 2}
    assert [t.name for t in there.tasks("Label")] == [t.name for t in here.tasks("Label")]

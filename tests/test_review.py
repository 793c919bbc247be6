"""Review and Ground Truth audits on known cases: the model accepts labels it agrees with
and rejects (or sends back) those it does not, saying which categories and why."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.inference import load_model
from autolabel.pipeline import RunOptions, run
from autolabel.pipeline.submit import hold_task
from autolabel.records import Volume
from autolabel.redbrick import get_project
from autolabel.reviews import review_tasks


@pytest.fixture(scope="module")
def ct_model() -> Any:
    return load_model("ct-threshold", device="cpu")


class _Missing:
    """A labeler who forgets one structure: the model's output without ``label_id``."""

    def __init__(self, model: Any, label_id: int) -> None:
        self.model, self.label_id, self.spec = model, label_id, model.spec

    def predict(self, volume: Volume) -> Any:
        out = self.model.predict(volume)
        out[out == self.label_id] = 0
        return out


def _submit(emulator: EmulatorHandle, model: Any, task_id: str, work: Path) -> None:
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        summary = run(p, model, RunOptions(mode="final", task_ids=(task_id,), work_dir=work))
    assert [o.status for o in summary.outcomes] == ["submitted"]


def _cli(emulator: EmulatorHandle, *args: str) -> list[str]:
    return [
        *args,
        "--url", emulator.url, "--org", emulator.org_id,
        "--project", emulator.project_id, "--api-key", emulator.api_key,
    ]  # fmt: skip


def test_auto_review_accepts_agreement_and_rejects_with_the_categories_and_dice(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad, _ = emulator.task_ids()
    _submit(emulator, ct_model, good, tmp_path / "a")
    _submit(emulator, _Missing(ct_model, 2), bad, tmp_path / "b")  # lungs forgotten
    for task_id in (good, bad):
        emulator.assign(task_id, emulator.key_user_id)

    code = main(_cli(emulator, "review", "--stage", "Review_1", "--auto", "--min-dice", "0.8",
                     "--json", "--work", str(tmp_path / "w")))  # fmt: skip
    assert code == 0
    decisions = {d["task_id"]: d for d in json.loads(capsys.readouterr().out)["tasks"]}
    assert decisions[good]["status"] == "accepted", decisions[good]["comment"]
    assert decisions[good]["dice"] == {"Body": 1.0, "Lung": 1.0, "Bone": 1.0}
    assert decisions[bad]["status"] == "rejected"
    assert decisions[bad]["dice"]["Lung"] == 0.0
    assert "Lung 0.00" in decisions[bad]["comment"] and "Body" not in decisions[bad]["comment"]
    assert emulator.task(good).stage_name == "END"
    assert emulator.task(bad).stage_name == "Label"


def test_manual_accept_and_reject_with_comment(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = emulator.task_ids()
    for task_id in (first, second):
        _submit(emulator, ct_model, task_id, tmp_path / task_id)
        emulator.assign(task_id, emulator.key_user_id)
    assert main(_cli(emulator, "review", "--accept", "--task-id", first)) == 0
    assert main(_cli(emulator, "review", "--reject", "--comment", "redo the lungs",
                     "--task-id", second, "--task-id", third)) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert emulator.task(first).stage_name == "END"
    assert emulator.task(second).stage_name == "Label"
    assert "rejected" in out and "redo the lungs" in out
    assert "skipped" in out and "not queued in Review_1" in out  # third is still in Label
    assert emulator.task(third).stage_name == "Label"


def test_correct_accepts_with_the_models_labels(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    task_id = emulator.task_ids()[0]
    _submit(emulator, _Missing(ct_model, 3), task_id, tmp_path / "a")  # bone forgotten
    emulator.assign(task_id, emulator.key_user_id)
    assert main(_cli(emulator, "review", "--correct", "--work", str(tmp_path / "w"))) == 0
    assert emulator.task(task_id).stage_name == "END"
    categories = {label["category"] for label in emulator.labels(task_id)}
    assert categories == {"Body", "Lung", "Bone"}


@pytest.mark.parametrize(
    ("decision", "operation", "stage", "status"),
    [
        ("--accept", "putReviewTaskSDK", "END", "accepted"),
        ("--reject --comment redo", "putReviewTaskSDK", "Label", "rejected"),
        ("--correct", "putTaskAndLabelsSDK", "END", "corrected"),
    ],
)
def test_a_decision_whose_reply_is_lost_is_settled_not_failed(
    emulator: EmulatorHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decision: str,
    operation: str,
    stage: str,
    status: str,
) -> None:
    """A gateway answers 504 while the decision commits a moment later: the task is re-read
    until it shows the decision, which is reported as made (exit 0), sent once."""
    task_id = emulator.task_ids()[0]
    emulator.as_user(emulator.key_user_id).submit(task_id)
    emulator.assign(task_id, emulator.key_user_id)
    sends = emulator.write_count(task_id)
    emulator.add_fault(operation, "late_commit", status=504, delay_s=1.0, times=1)
    capsys.readouterr()
    args = ["review", *decision.split(), "--task-id", task_id, "--json", "--work", str(tmp_path)]
    assert main([*args, *emulator.cli_flags()]) == 0
    (task,) = json.loads(capsys.readouterr().out)["tasks"]
    assert task["status"] == status
    assert emulator.task(task_id).stage_name == stage
    assert emulator.write_count(task_id) == sends + 1


def _project(emulator: EmulatorHandle) -> Any:
    return get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url)


def _waiting_for_a_task_lock(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "task_write_lock":
            return True
        frame = frame.f_back
    return False


def test_a_decision_waits_for_the_task_lock_and_skips_a_task_decided_meanwhile(
    emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reviews on one machine: the second waits for the task's write lock, re-reads the
    task under it, finds it decided and skips it -- one decision reaches the server, not two."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    task_id = emulator.task_ids()[0]
    emulator.as_user(emulator.key_user_id).submit(task_id)
    emulator.assign(task_id, emulator.key_user_id)
    sends = emulator.write_count(task_id)
    held, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def first_review() -> None:  # holds the lock as a review that is deciding would
        with _project(emulator) as project, hold_task(project, task_id, 5.0):
            held.set()
            release.wait(30)
            project.review_task(task_id, "Review_1", accept=True)

    def second_review() -> None:
        with _project(emulator) as project:
            results.append(review_tasks(project, None, decision="reject", task_ids=(task_id,)))

    first, second = threading.Thread(target=first_review), threading.Thread(target=second_review)
    first.start()
    assert held.wait(30)
    second.start()
    for _ in range(600):  # until the second review is blocked on the task's lock
        if _waiting_for_a_task_lock(second) or not second.is_alive():
            break
        time.sleep(0.05)
    release.set()
    first.join(60)
    second.join(60)
    (summary,) = results
    (decision,) = summary.decisions
    assert decision.status == "skipped" and "decided meanwhile" in decision.reason
    assert emulator.task(task_id).stage_name == "END"  # the first review's accept stands
    assert emulator.write_count(task_id) == sends + 1


def test_audit_lists_then_sends_back_only_ground_truth_the_model_disagrees_with(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fine, poor, _ = emulator.task_ids()
    _submit(emulator, ct_model, fine, tmp_path / "a")
    _submit(emulator, _Missing(ct_model, 3), poor, tmp_path / "b")
    for task_id in (fine, poor):
        emulator.assign(task_id, emulator.key_user_id)
        emulator.as_user(emulator.key_user_id).review(task_id, passed=True)
    assert {emulator.task(fine).stage_name, emulator.task(poor).stage_name} == {"END"}

    args = ["reannotate", "--audit", "--max-dice", "0.7", "--json", "--work", str(tmp_path / "w")]
    assert main(_cli(emulator, *args, "--dry-run")) == 0
    listed = {d["task_id"]: d for d in json.loads(capsys.readouterr().out)["tasks"]}
    assert listed[fine]["status"] == "kept"
    assert listed[poor]["status"] == "listed" and "Bone 0.00" in listed[poor]["reason"]
    assert emulator.task(poor).stage_name == "END"  # a dry run moves nothing

    assert main(_cli(emulator, *args)) == 0
    moved = {d["task_id"]: d["status"] for d in json.loads(capsys.readouterr().out)["tasks"]}
    assert moved == {fine: "kept", poor: "sent_back"}
    assert emulator.task(poor).stage_name == "Label"
    assert emulator.task(fine).stage_name == "END"


def test_reannotate_by_id_moves_ground_truth_only(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done, label_stage, _ = emulator.task_ids()
    _submit(emulator, ct_model, done, tmp_path / "a")
    emulator.assign(done, emulator.key_user_id)
    emulator.as_user(emulator.key_user_id).review(done, passed=True)
    code = main(_cli(emulator, "reannotate", "--task-id", done, "--task-id", label_stage))
    out = capsys.readouterr().out
    assert code == 0
    assert emulator.task(done).stage_name == "Label"
    assert "only Ground Truth tasks can be sent back" in out


def test_dice_is_computed_per_category_on_the_image_grid() -> None:
    from autolabel.reviews.compare import CategoryMap, dice_by_category

    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 1
    b[:1] = 1
    b[3] = 2
    scores = dice_by_category(
        CategoryMap(a, {1: "Liver"}),
        CategoryMap(b, {1: "Liver", 2: "Spleen"}),
        ["Liver", "Spleen", "Bone"],
    )
    assert scores == {"Liver": round(2 * 16 / (32 + 16), 4), "Spleen": 0.0}

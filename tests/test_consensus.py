"""Consensus projects: several labelers per task, each in a sub-task of their own. The key
labels its own sub-task, never touches the others' labels, and says truly why it leaves a
task alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.redbrick import get_project

redbrick = pytest.importorskip("redbrick")


@pytest.fixture
def consensus(emulator: EmulatorHandle) -> dict[str, str]:
    """Label is a consensus stage. ``second``: the person labels first, the key second;
    ``first``: the key first, the person second; ``theirs``: the person and a colleague.
    The person has saved a draft on each of the key's two tasks."""
    emulator.set_stage_config("Label", autoAssign=False, isConsensusLabel=True)
    colleague = emulator.add_user("Cole League", email="cole@example.com")
    person, key = emulator.human_email, emulator.key_user_id
    second, first, theirs = emulator.task_ids()
    emulator.assign(second, [person, key])
    emulator.assign(first, [key, person])
    emulator.assign(theirs, [person, colleague.user_id])
    for task_id in (second, first):
        emulator.as_user(person).save_labels(task_id, labels=[{"category": "Liver"}])
    return {"second": second, "first": first, "theirs": theirs}


def test_the_sdk_sees_each_labelers_sub_task(
    emulator: EmulatorHandle, consensus: dict[str, str], tmp_path: Path
) -> None:
    """The emulator answers consensus as the SDK reads it: the project has consensus on and
    ``list_tasks`` shows both labelers of a task."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdk = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    assert sdk.is_consensus_enabled
    listed = {t["taskId"]: t for t in sdk.export.list_tasks()}
    who = [a["user"] for a in listed[consensus["second"]]["assignees"]]
    assert who == [emulator.human_email, "API Key - autolabel"]  # the SDK names keys so
    exported = list(sdk.export.export_tasks(task_id=consensus["second"], destination=str(tmp_path)))
    parts = exported[0]["consensusTasks"]  # each labeler's own part; only the person's has labels
    assert [p.get("updatedBy") for p in parts] == [emulator.human_email, "API Key - autolabel"]
    assert ["labelsId" in p for p in parts] == [True, False]


def test_the_key_labels_its_own_sub_task_and_leaves_the_persons_labels(
    emulator: EmulatorHandle, consensus: dict[str, str], tmp_path: Path
) -> None:
    """Both of the key's tasks are submitted in the key's own sub-task; the person's draft
    stays the person's; the tasks wait in Label for the person."""
    person = emulator.as_user(emulator.human_email).user.user_id
    before = {t: emulator.latest_labels(t) for t in (consensus["second"], consensus["first"])}
    code = main(
        ["run", "--finalize", "--quiet", "--work", str(tmp_path / "w"), *emulator.cli_flags()]
    )
    assert code == 0
    for name in ("second", "first"):
        task_id = consensus[name]
        assert emulator.key_writes()[task_id] == 1
        assert emulator.task(task_id).stage_name == "Label"  # the person has not submitted
        theirs = emulator.emulator.store.latest_labels_by(task_id, person)
        earlier = before[task_id]
        assert theirs is not None and earlier is not None and theirs.td_id == earlier.td_id
        with get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        ) as p:
            task = p.get_task(task_id)
        mine = task.part_of(emulator.key_user_id)
        assert mine is not None and mine.state == "COMPLETED"
        assert mine.labels is not None and mine.labels.created_by == emulator.key_user_id
        assert set(mine.labels.files) == {0}
    assert emulator.key_writes().get(consensus["theirs"], 0) == 0


def test_a_consensus_task_of_others_is_skipped_with_the_true_reason(
    emulator: EmulatorHandle,
    consensus: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Asked for a task the key does not label, the run names its labelers (never
    "assigned to nobody")."""
    code = main(["run", "--json", "--task-id", consensus["theirs"],
                     "--work", str(tmp_path / "w"), *emulator.cli_flags()])  # fmt: skip
    assert code == 0
    (task,) = json.loads(capsys.readouterr().out)["tasks"]
    assert task["status"] == "skipped"
    assert "consensus task labelled by" in task["reason"] and "cole@example.com" in task["reason"]
    assert "nobody" not in task["reason"]
    assert emulator.key_writes().get(consensus["theirs"], 0) == 0

"""RedBrick's "Programmatic Label & Review" snippets port by changing one import.

The same script (the docs' calls: ``get_project``, ``put_tasks`` as draft and as submit,
``review.put_tasks`` accept / reject / accept with correction, ``move_tasks_to_start``,
plus ``list_tasks`` for the tasks assigned to the key and ``assign_tasks``) runs once with
the official ``redbrick`` SDK 2.35.4 and once with ``autolabel.redbrick``, each against its
own copy of one seeded emulator. The two emulators must end in the same state: stages,
states, assignees, review results, label objects, label file bytes and the write log.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autolabel import redbrick as ours
from autolabel.emulator import EmulatorHandle

NAMES = ("phantom-000", "phantom-001", "phantom-002", "phantom-003")


def docs_script(redbrick: ModuleType, handle: EmulatorHandle, labels: Path, fix: Path) -> None:
    """The docs' snippets, in order; ``redbrick`` is either SDK."""
    project = redbrick.get_project(handle.org_id, handle.project_id, handle.api_key, url=handle.url)

    # "Retrieving tasks assigned to your API key using list_tasks"
    mine = project.export.list_tasks(
        search=redbrick.TaskFilters.QUEUED,
        stage_name="Label",
        user_id=project.context.key_id,
        limit=None,
    )
    by_name = {task["name"]: task["taskId"] for task in mine}
    draft, accept, reject, correct = (by_name[name] for name in NAMES)
    series = [
        {"segmentations": str(labels), "segmentMap": {"1": "Liver", "2": {"category": "Spleen"}}}
    ]

    # Save tasks as draft with new labels
    assert (
        project.labeling.put_tasks("Label", [{"taskId": draft, "series": series}], finalize=False)
        == []
    )
    # Submit tasks with new labels
    tasks = [{"taskId": task_id, "series": series} for task_id in (accept, reject, correct)]
    assert project.labeling.put_tasks("Label", tasks) == []

    # Review tasks must be assigned to the key too
    project.review.assign_tasks([accept, reject, correct], email=project.context.key_id)
    # Set review_result to True if you want to accept the tasks
    project.review.put_tasks("Review_1", [{"taskId": accept}], review_result=True)
    # Set review_result to False if you want to reject the tasks
    project.review.put_tasks("Review_1", [{"taskId": reject}], review_result=False)
    # Add labels if you want to accept the tasks with correction
    fixed = [{"segmentations": str(fix), "segmentMap": {"1": "Kidney"}}]
    project.review.put_tasks("Review_1", [{"taskId": correct, "series": fixed}])

    # Re-annotate Ground Truth tasks: send them back to Label
    project.labeling.move_tasks_to_start(task_ids=[accept])


def end_state(handle: EmulatorHandle) -> dict[str, Any]:
    """What a user could observe of every task, minus timestamps and random storage paths."""
    state: dict[str, Any] = {}
    for task in handle.tasks():
        labels = handle.labels(task.task_id)
        for label in labels:
            label.pop("labelid", None)
        state[task.name] = {
            "stage": task.stage_name,
            "state": task.state,
            "assigned_to": task.assigned_to,
            "review_state": task.review_state,
            "labels": sorted(labels, key=lambda label: json.dumps(label, sort_keys=True)),
            "label_files": handle.label_files(task.task_id),
            "label_versions": [
                (v.stage_name, v.finished, v.created_by) for v in handle.label_history(task.task_id)
            ],
            "writes": [
                (e.operation, e.stage_name, e.finished, e.review_val, e.accepted)
                for e in handle.events(task.task_id)
            ],
        }
    return state


def write_label(path: Path, values: tuple[int, ...]) -> Path:
    data = np.zeros((32, 32, 16), dtype=np.uint8)
    for n, value in enumerate(values):
        data[4 + 8 * n : 10 + 8 * n, 6:20, 3:12] = value
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_docs_snippets_end_in_the_same_state_with_either_sdk(
    emulator_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' label and review flow leaves identical emulators with the SDK and with us."""
    official = pytest.importorskip("redbrick")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the SDK writes its config under ~
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    labels = write_label(tmp_path / "labels.nii.gz", (1, 2))
    fix = write_label(tmp_path / "fix.nii.gz", (1,))
    theirs_emulator = emulator_factory(studies=4)
    ours_emulator = emulator_factory(studies=4)
    assert ours_emulator.task_ids() == theirs_emulator.task_ids()  # identical seeds

    docs_script(official, theirs_emulator, labels, fix)
    docs_script(ours, ours_emulator, labels, fix)

    theirs, mine = end_state(theirs_emulator), end_state(ours_emulator)
    assert mine == theirs
    # And the flow did what the docs say, so the comparison is not between two no-ops.
    assert {name: s["stage"] for name, s in mine.items()} == {
        "phantom-000": "Label",
        "phantom-001": "Label",
        "phantom-002": "Label",
        "phantom-003": "END",
    }
    assert mine["phantom-000"]["state"] == "STAGED"
    assert mine["phantom-001"]["assigned_to"] is None  # back at the start, unassigned
    assert mine["phantom-002"]["review_state"] == "FAILED"
    assert [label["category"] for label in mine["phantom-003"]["labels"]] == ["Kidney"]
    assert mine["phantom-003"]["label_files"] == [fix.read_bytes()]

"""Large label sets: RedBrick keeps more than 1,000 label objects in the ``labelsDataPath``
file and answers ``labelsData`` empty. A person's big label set must still count as their
work: autolabel never overwrites it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.redbrick import get_project

redbrick = pytest.importorskip("redbrick")

OBJECTS = 1200


def _landmarks(count: int) -> list[dict[str, Any]]:
    return [
        {"category": "Nodule", "point": {"i": n % 32, "j": (n // 32) % 32, "k": n % 16}}
        for n in range(count)
    ]


def test_a_persons_big_label_set_is_never_overwritten(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A person saves 1,200 landmarks with the official SDK (stored as a labels file);
    ``autolabel run`` on the task skips it, and the person's labels stay."""
    task_id = emulator.task_ids()[0]
    person = emulator.add_user("Nora Nodule", email="nora@example.com")
    assert person.api_key is not None
    emulator.assign(task_id, person.email)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        theirs = redbrick.get_project(
            emulator.org_id, emulator.project_id, person.api_key, url=emulator.url
        )
    failed = theirs.labeling.put_tasks(
        "Label",
        [{"taskId": task_id, "series": [{"landmarks3d": _landmarks(OBJECTS)}]}],
        finalize=False,
    )
    assert not failed
    saved = emulator.latest_labels(task_id)
    assert saved is not None and saved.created_by == person.user_id
    assert saved.labels_data == "[]" and saved.labels_data_path and not any(saved.labels_map)
    emulator.assign(task_id, emulator.key_user_id)

    work = str(tmp_path / "w")
    code = main(["run", "--task-id", task_id, "--finalize", "--work", work, "--quiet",
                 *emulator.cli_flags()])  # fmt: skip
    assert code == 0
    assert emulator.key_writes()[task_id] == 0
    latest = emulator.latest_labels(task_id)
    assert latest is not None and latest.td_id == saved.td_id
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        (exported,) = list(p.export.export_tasks(task_id=task_id, destination=tmp_path / "x"))
    assert len(exported["labels"]) == OBJECTS  # our export reads the labels file too

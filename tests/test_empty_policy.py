"""What autolabel does when the model finds nothing, as a RedBrick user sees it (#10 point 8).

``--empty flag`` used to write a note into series ``metaData``, which no RedBrick user sees;
it is gone, with a message that says what to use instead. ``--empty submit`` saves empty
labels, which the official SDK's export shows as a labelled series with no segment.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import add_series_task, blank_ct_items

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.errors import ConfigError
from autolabel.pipeline.options import RunOptions

redbrick = pytest.importorskip("redbrick")


def _run(emulator: EmulatorHandle, work: Path, *extra: str) -> list[str]:
    return [
        "run", "--url", emulator.url, "--org", emulator.org_id, "--project",
        emulator.project_id, "--api-key", emulator.api_key, "--work", str(work), *extra,
    ]  # fmt: skip


def test_empty_flag_is_refused_with_what_to_use(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line refuses ``--empty flag`` (exit 2, naming the choices); a settings
    file or script that still says ``flag`` gets a message with the replacement."""
    with pytest.raises(SystemExit) as caught:
        main(_run(emulator, tmp_path / "work", "--empty", "flag"))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'flag'" in err and "'submit'" in err
    with pytest.raises(ConfigError, match=r"shows that note to nobody.*submit"):
        RunOptions(empty="flag")  # type: ignore[arg-type]
    assert sum(emulator.key_writes().values()) == 0


def test_empty_submit_is_seen_through_the_sdk(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A task of air with ``--empty submit``: the SDK's export shows its series labelled with
    no segment and the task is the key's draft (the default ``skip`` leaves it untouched)."""
    task_id = add_series_task(emulator, "air", [("CT", blank_ct_items(emulator, tmp_path / "air"))])
    assert main(_run(emulator, tmp_path / "skip", "--task-id", task_id)) == 0
    assert emulator.latest_labels(task_id) is None
    assert main(_run(emulator, tmp_path / "submit", "--task-id", task_id, "--empty", "submit")) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        project = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    (task,) = project.export.export_tasks(task_id=task_id, destination=str(tmp_path / "out"))
    (series,) = task["series"]
    assert series.get("segmentMap") in ({}, None)
    drafts = project.export.list_tasks(
        search=redbrick.TaskFilters.DRAFT, stage_name="Label", user_id=project.context.key_id
    )
    assert task_id in [t["taskId"] for t in drafts]

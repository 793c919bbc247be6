"""Partial GraphQL answers: a field error next to data in a task listing. The SDK reads
listings with ``raise_for_error=False`` and keeps the data; one bad entry must not end a
run: it is recorded and the run goes on."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.redbrick import get_project
from autolabel.redbrick.types import ListingError

redbrick = pytest.importorskip("redbrick")


def test_the_sdk_and_our_client_keep_a_listing_with_a_field_error(
    emulator: EmulatorHandle,
) -> None:
    """The emulator's field error (entry 1's datapoint) leaves the rest of the answer: the
    official SDK lists all three tasks, and our client names the task the error hit."""
    emulator.add_fault("genericTasks", "field_error", entry=1, message="datapoint timed out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdk = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    assert len(list(sdk.export.list_tasks())) == 3
    assert emulator.faults()[0]["fired"] == 1

    emulator.add_fault("genericTasks", "field_error", entry=1, message="datapoint timed out")
    seen: list[ListingError] = []
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        listed = list(p.list_assigned_tasks("Label", on_error=seen.append))
    assert len(listed) == 3
    (error,) = seen
    assert error.task_id == listed[1].task_id
    assert "datapoint timed out" in error.message and "entries.1.datapoint" in error.message


def test_a_run_records_a_task_it_could_not_list_and_does_the_others(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry answered null fails under a placeholder with the server's message; the
    other two tasks are labelled; the exit code says something failed."""
    emulator.add_fault("genericTasks", "field_error", entry=0, null_field=None, message="boom")
    code = main(["run", "--json", "--work", str(tmp_path / "w"), *emulator.cli_flags()])
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 1
    (failed,) = [t for t in summary["tasks"] if t["status"] == "failed"]
    assert "could not list one task" in failed["reason"] and "boom" in failed["reason"]
    assert sum(emulator.key_writes().values()) == 2


def test_a_run_works_on_an_entry_that_survived_its_field_error(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """An entry whose datapoint failed still has its id: the task's own re-read decides,
    and here it succeeds, so all three are labelled."""
    emulator.add_fault("genericTasks", "field_error", entry=2)
    assert main(["run", "--quiet", "--work", str(tmp_path / "w"), *emulator.cli_flags()]) == 0
    assert sorted(emulator.key_writes().values()) == [1, 1, 1]

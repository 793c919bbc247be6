"""autolabel meets RedBrick's answers as the real service sends them (issue #10 point 7).

The emulator answers the way redbrick-sdk 2.35.4 shows the service does: a bad key gets a
fast HTTP 500 (redbrick/common/client.py), a project's ``status`` can say it is archived
(redbrick/project.py), a review stage may sample only ``reviewPercent`` of its tasks
(redbrick/stage/review.py). Each test runs the command line against it over sockets.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.emulator.recorder import recording_proxy

redbrick = pytest.importorskip("redbrick")


def _connection(emulator: EmulatorHandle, url: str | None = None) -> list[str]:
    return [
        "--url", url or emulator.url, "--org", emulator.org_id,
        "--project", emulator.project_id, "--api-key", emulator.api_key,
    ]  # fmt: skip


def _run(emulator: EmulatorHandle, work: Path, *extra: str, url: str | None = None) -> list[str]:
    return ["run", *_connection(emulator, url), "--work", str(work), *extra]


def _sdk_project(emulator: EmulatorHandle) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        return redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )


def test_bad_key_is_exit_3_after_one_request(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fast 500 on the first call is RedBrick refusing the key: exit 3 at once, no retries,
    the key not printed; the SDK reads the same answer as an authentication error."""
    wrong = "w" * 43
    argv = _run(emulator, tmp_path / "work")
    argv[argv.index("--api-key") + 1] = wrong
    with recording_proxy(emulator.url) as proxy:
        argv[argv.index("--url") + 1] = proxy.url
        assert main(argv) == 3
    err = capsys.readouterr().err
    assert "refuses an API key" in err and wrong not in err
    assert [e.status for e in proxy.exchanges] == [500]
    with warnings.catch_warnings(), pytest.raises(redbrick.AuthenticationError):
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        redbrick.get_project(emulator.org_id, emulator.project_id, wrong, url=emulator.url)


@pytest.mark.parametrize("message", ["Unauthorized", "Forbidden: stage access denied"])
def test_refusal_on_one_task_fails_that_task_only(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str], message: str
) -> None:
    """A per-task "Unauthorized"/"Forbidden" is that task's failure; the run writes the rest."""
    emulator.add_fault("putTaskAndLabelsSDK", "graphql_error", message=message, times=1)
    assert main(_run(emulator, tmp_path / "work", "--json")) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {**summary["counts"], "done": 2, "failed": 1}
    (failed,) = [t for t in summary["tasks"] if t["status"] == "failed"]
    assert message in failed["reason"]
    assert sum(emulator.key_writes().values()) == 2


@pytest.mark.parametrize(
    ("status", "words"),
    [("REMOVING", "has been archived"), ("CREATION_FAILURE", "failed to be created")],
)
def test_archived_or_failed_project_is_refused(
    emulator: EmulatorHandle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: str,
    words: str,
) -> None:
    """A project archived or failed at creation stops the run with exit 2 and says why,
    before any task is touched; the official SDK refuses the same project."""
    emulator.set_project_status(status)
    assert main(_run(emulator, tmp_path / "work")) == 2
    err = capsys.readouterr().err
    assert words in err and emulator.project_id in err
    assert sum(emulator.key_writes().values()) == 0
    with pytest.raises(redbrick.RedbrickError, match=r"archived|failed to be created"):
        _sdk_project(emulator)


def test_sampled_review_is_named_in_the_summary(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review_1 reviews none of the tasks (reviewPercent 0): --finalize sends them straight to
    Ground Truth, which the SDK's export shows, and both summaries say it would."""
    emulator.set_stage_config("Review_1", reviewPercent=0)
    assert main(_run(emulator, tmp_path / "work", "--finalize", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    (note,) = summary["notes"]
    assert "Review_1 reviews only 0% of tasks" in note and "Ground Truth" in note
    project = _sdk_project(emulator)
    ground_truth = list(project.export.list_tasks(search=redbrick.TaskFilters.GROUNDTRUTH))
    assert len(ground_truth) == 3


def test_sampled_review_is_named_in_the_human_summary(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half the tasks sampled: the printed summary carries the note; each task is either in
    Review_1 or in Ground Truth. A draft run writes nowhere and notes nothing."""
    emulator.set_stage_config("Review_1", reviewPercent=0.5)
    assert main(_run(emulator, tmp_path / "drafts", "--limit", "1")) == 0
    assert "reviews only" not in capsys.readouterr().err
    assert main(_run(emulator, tmp_path / "work", "--finalize", "--force")) == 0
    assert "Review_1 reviews only 50% of tasks" in capsys.readouterr().err
    assert len(emulator.tasks("Review_1")) + len(emulator.tasks("END")) == 3


def test_full_review_adds_no_note(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the default review of every task the summary has no note and tasks reach Review_1."""
    assert main(_run(emulator, tmp_path / "work", "--finalize")) == 0
    assert "reviews only" not in capsys.readouterr().err
    assert len(emulator.tasks("Review_1")) == 3

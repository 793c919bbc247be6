"""``autolabel undo`` over real sockets, judged through the official SDK's export: a draft a
person edited is kept and the others revert to no labels; a dry run changes nothing; a
second undo is a no-op; a submitted task that moved on is listed with the reviewer's action;
a revert whose reply was lost is written once."""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import autolabel
from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.inference import load_model
from autolabel.ledger import SCHEMA_VERSION, Ledger, ModelKey, TaskState, ledger_path
from autolabel.pipeline import RunOptions, run
from autolabel.pipeline.undo import undo
from autolabel.redbrick import get_project

redbrick = pytest.importorskip("redbrick")

PUT = "putTaskAndLabelsSDK"


@pytest.fixture(scope="module")
def ct_model() -> Any:
    return load_model("ct-threshold", device="cpu")


def _sdk(emulator: EmulatorHandle, api_key: str | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        return redbrick.get_project(
            emulator.org_id, emulator.project_id, api_key or emulator.api_key, url=emulator.url
        )


def _exported(emulator: EmulatorHandle) -> dict[str, dict[str, Any]]:
    """Every task as the official SDK exports it (its labels, without mask files), by id."""
    folder = str(emulator.data_dir.parent / "sdk-export")  # made even without masks
    tasks = _sdk(emulator).export.export_tasks(without_masks=True, destination=folder)
    return {t["taskId"]: _unsigned(t) for t in tasks}


def _unsigned(value: Any) -> Any:
    """``value`` with each presigned URL cut before its query (signed anew on each export)."""
    if isinstance(value, dict):
        return {k: _unsigned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsigned(v) for v in value]
    return value.split("?", 1)[0] if isinstance(value, str) else value


def _has_labels(task: dict[str, Any]) -> bool:
    """Whether the SDK's export shows any label on the task (a segmentation or an object)."""
    keys = ("segmentations", "segmentMap", "classifications", "points", "measurements")
    return any(key in series for series in task.get("series") or [] for key in keys)


def _draft_run(emulator: EmulatorHandle, model: Any, work: Path, **options: Any) -> str:
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        summary = run(p, model, RunOptions(work_dir=work, previews=False, **options))
    assert summary.exit_code == 0, summary.to_dict()
    return summary.run_id


def _undo_cli(emulator: EmulatorHandle, work: Path, capsys: Any, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["undo", *emulator.cli_flags(), "--work", str(work), "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    assert emulator.api_key not in out
    result: dict[str, Any] = json.loads(out)
    return result


def _by_task(result: dict[str, Any]) -> dict[str, str]:
    return {t["task_id"]: t["status"] for t in result["tasks"]}


def _person_edits(emulator: EmulatorHandle, task_id: str, tmp_path: Path) -> str:
    """A labeler takes the task over and saves their own draft with the official SDK."""
    person = emulator.add_user("Lena Labeler", email="lena@example.com")
    emulator.assign(task_id, person.email)
    labels = np.zeros((32, 32, 16), dtype=np.uint8)
    labels[4:12, 4:12, 2:6] = 1
    path = tmp_path / "lena.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    series = [{"segmentations": str(path), "segmentMap": {"1": "Liver"}}]
    assert person.api_key is not None
    failed = _sdk(emulator, person.api_key).labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": series}], finalize=False
    )
    assert failed == []
    return person.user_id


def test_undo_keeps_the_draft_a_person_edited_and_reverts_the_other_two(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    work = tmp_path / "work"
    run_id = _draft_run(emulator, ct_model, work)
    ids = emulator.task_ids("Label")
    assert all(_has_labels(t) for t in _exported(emulator).values())
    person = _person_edits(emulator, ids[0], tmp_path)

    result = _undo_cli(emulator, work, capsys, "--run", run_id)

    assert _by_task(result) == {ids[0]: "kept", ids[1]: "reverted", ids[2]: "reverted"}
    kept = next(t for t in result["tasks"] if t["task_id"] == ids[0])
    assert person in kept["reason"] and "person" in kept["reason"]
    exported = _exported(emulator)
    assert _has_labels(exported[ids[0]])  # the person's draft, untouched
    assert emulator.latest_labels(ids[0]).created_by == person  # type: ignore[union-attr]
    for task_id in ids[1:]:  # back to what they had before the run: no labels, a draft
        assert not _has_labels(exported[task_id])
        assert exported[task_id]["currentStageName"] == "Label"
        assert emulator.task(task_id).assigned_to == emulator.key_user_id
    with Ledger(ledger_path(work), create=False) as ledger:
        undone = [e for t in ids for e in ledger.history(t) if e.state is TaskState.UNDONE]
        assert sorted(e.task_id for e in undone) == sorted(ids[1:])
        assert all(e.detail["runs"] == [run_id] and e.detail["restored"] for e in undone)
        assert ledger.runs()[0].mode == "undo"


def test_dry_run_shows_the_plan_and_changes_nothing(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    work = tmp_path / "work"
    run_id = _draft_run(emulator, ct_model, work)
    ids = emulator.task_ids("Label")
    _person_edits(emulator, ids[2], tmp_path)
    before = _exported(emulator)
    writes = emulator.write_counts()
    with Ledger(ledger_path(work), create=False) as ledger:
        events = [e for t in ids for e in ledger.history(t)]
        runs = len(ledger.runs())

    result = _undo_cli(emulator, work, capsys, "--run", run_id, "--dry-run")

    assert result["dry_run"] is True
    assert _by_task(result) == {ids[0]: "would_revert", ids[1]: "would_revert", ids[2]: "kept"}
    assert _exported(emulator) == before
    assert emulator.write_counts() == writes
    with Ledger(ledger_path(work), create=False) as ledger:
        assert [e for t in ids for e in ledger.history(t)] == events
        assert len(ledger.runs()) == runs


def test_a_second_undo_is_a_no_op(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    work = tmp_path / "work"
    _draft_run(emulator, ct_model, work)
    ids = emulator.task_ids("Label")
    first = _undo_cli(emulator, work, capsys, "--model", "ct-threshold@1.0.0")
    assert set(_by_task(first).values()) == {"reverted"}
    after_first = _exported(emulator)
    writes = emulator.write_counts()

    second = _undo_cli(emulator, work, capsys, "--model", "ct-threshold@1.0.0")

    assert _by_task(second) == dict.fromkeys(ids, "already_undone")
    assert emulator.write_counts() == writes
    assert _exported(emulator) == after_first


def test_a_submitted_task_that_moved_on_is_listed_with_the_reviewers_action(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    work = tmp_path / "work"
    task_id = emulator.task_ids("Label")[0]
    run_id = _draft_run(emulator, ct_model, work, mode="final", task_ids=(task_id,))
    assert emulator.task(task_id).stage_name == "Review_1"
    before = _exported(emulator)[task_id]

    result = _undo_cli(emulator, work, capsys, "--run", run_id)

    (item,) = result["tasks"]
    assert item["status"] == "needs_reviewer"
    assert "Review_1" in item["todo"] and "review_result=False" in item["todo"]
    assert _exported(emulator)[task_id] == before  # listed, not changed
    # The reviewer does as told; the task comes back to the key in Label, and the same
    # undo now reverts it.
    emulator.assign(task_id, emulator.key_user_id)
    _sdk(emulator).review.put_tasks("Review_1", [{"taskId": task_id}], review_result=False)
    assert emulator.task(task_id).stage_name == "Label"
    again = _undo_cli(emulator, work, capsys, "--run", run_id)
    assert _by_task(again) == {task_id: "reverted"}
    assert not _has_labels(_exported(emulator)[task_id])


def test_a_ground_truth_task_is_listed_with_move_tasks_to_start(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    task_id = emulator.task_ids("Label")[0]
    emulator.set_stage_config("Review_1", reviewPercent=0)  # submitted tasks skip review
    run_id = _draft_run(emulator, ct_model, tmp_path / "w", mode="final", task_ids=(task_id,))
    assert emulator.task(task_id).stage_name == "END"
    connection = {"url": emulator.url, "org_id": emulator.org_id}
    connection.update(project_id=emulator.project_id, api_key=emulator.api_key)
    (item,) = autolabel.undo(run_ids=[run_id], work_dir=tmp_path / "w", **connection).items
    assert item.status == "needs_reviewer"
    assert "move_tasks_to_start" in item.todo and task_id in item.todo


def test_after_an_undo_the_model_pre_labels_the_tasks_again(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """The revert is nobody's pre-label: a later run (here, or in another work folder)
    writes the tasks again instead of taking them for done."""
    run_id = _draft_run(emulator, ct_model, tmp_path / "w")
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        undo(p, tmp_path / "w", run_ids=(run_id,))
        again = run(p, ct_model, RunOptions(work_dir=tmp_path / "w", previews=False))
        elsewhere = run(p, ct_model, RunOptions(work_dir=tmp_path / "other", previews=False))
    assert [o.status for o in again.outcomes] == ["draft_saved"] * 3
    assert all(o.status == "skipped" for o in elsewhere.outcomes)  # done by `again`
    assert all(_has_labels(t) for t in _exported(emulator).values())


def test_a_revert_whose_reply_was_lost_is_written_once(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    run_id = _draft_run(emulator, ct_model, tmp_path / "w")
    ids = emulator.task_ids("Label")
    assert emulator.key_writes() == dict.fromkeys(ids, 1)
    emulator.add_fault(PUT, "late_commit", status=504, delay_s=2.0, times=1)
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url,
        timeout=(2.0, 1.5),
    ) as project:  # fmt: skip
        summary = undo(project, tmp_path / "w", run_ids=(run_id,), settle_window_s=8.0)
    assert [i.status for i in summary.items] == ["reverted"] * 3
    time.sleep(2.0)  # past the late commit: a second send would show now
    assert emulator.key_writes() == dict.fromkeys(ids, 2)  # the run's write and one revert
    assert not any(_has_labels(t) for t in _exported(emulator).values())


def test_an_undo_killed_after_its_intent_settles_on_the_next_start(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """The revert landed but ``undone`` was never recorded: the next undo re-reads the task,
    records it and writes nothing more."""
    work = tmp_path / "w"
    run_id = _draft_run(emulator, ct_model, work)
    task_id = emulator.task_ids("Label")[0]
    with Ledger(ledger_path(work), create=False) as ledger:
        (written,) = [e for e in ledger.history(task_id) if e.state is TaskState.DRAFT_SAVED]
        seen = emulator.latest_labels(task_id)
        assert seen is not None
        killed = ledger.start_run(mode="undo")
        killed.record(task_id, TaskState.UNDOING, model=written.model, detail={
            "stage": "Label", "undid": [written.seq], "runs": [run_id],
            "labels_seen_by": seen.created_by, "labels_seen_at": seen.created_at,
        })  # fmt: skip
    emulator.as_user(emulator.key_user_id).save_labels(task_id)  # its revert, landed
    writes = emulator.key_writes()
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        statuses = {i.task_id: i.status for i in undo(p, work, run_ids=(run_id,)).items}
    assert statuses[task_id] == "already_undone"
    assert emulator.key_writes()[task_id] == writes[task_id]
    with Ledger(ledger_path(work), create=False) as ledger:
        assert ledger.latest(task_id, written.model).state is TaskState.UNDONE  # type: ignore[union-attr]


def test_bad_selections_are_usage_errors(emulator: EmulatorHandle, tmp_path: Path) -> None:
    flags = [*emulator.cli_flags(), "--work", str(tmp_path / "none")]
    assert main(["undo", *flags]) == 2  # neither --run nor --model
    assert main(["undo", *flags, "--model", "ct-threshold"]) == 2  # no @VERSION
    assert main(["undo", *flags, "--run", "nope"]) == 2  # no ledger there


def test_a_version_1_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """A ledger written before undo existed keeps its events and accepts undo's states."""
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        model = ModelKey("m", "1")
        handle = ledger.start_run(mode="draft", model=model)
        handle.record("t1", TaskState.WRITING)
        handle.record("t1", TaskState.DRAFT_SAVED)
    db = sqlite3.connect(path, isolation_level=None)
    (events_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
    (runs_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()
    db.execute("PRAGMA writable_schema = ON")  # make it the version-1 file it would be
    db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'events'",
               (events_sql.replace(", 'undoing', 'undone'", ""),))  # fmt: skip
    db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'runs'",
               (runs_sql.replace(", 'undo'", ""),))  # fmt: skip
    db.execute("PRAGMA user_version = 1")
    db.close()
    with Ledger(path) as ledger:
        assert [e.state for e in ledger.history("t1")] == [TaskState.WRITING, TaskState.DRAFT_SAVED]
        undoing = ledger.start_run(mode="undo")
        undoing.record("t1", TaskState.UNDOING, model=model)
        undoing.record("t1", TaskState.UNDONE, model=model)
        assert ledger.done_task_ids(model, "draft") == set()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM events")
    db.close()


def test_the_revert_is_the_empty_draft_the_sdk_itself_saves(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """Undo writes back "no labels" exactly as the official SDK's put_tasks does for a
    task whose series carry no segmentation: same stored labels, same export."""
    ids = emulator.task_ids("Label")
    run_id = _draft_run(emulator, ct_model, tmp_path / "w", task_ids=(ids[0],))
    failed = _sdk(emulator).labeling.put_tasks(
        "Label", [{"taskId": ids[1], "series": [{"name": "CT"}]}], finalize=False
    )
    assert failed == []
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        undo(p, tmp_path / "w", run_ids=(run_id,))
    ours, sdks = (emulator.latest_labels(t) for t in ids[:2])
    assert ours is not None and sdks is not None
    assert (ours.labels_data, ours.labels_map, ours.labels_data_path, ours.finished) == (
        sdks.labels_data, sdks.labels_map, sdks.labels_data_path, sdks.finished,
    )  # fmt: skip
    assert ours.labels_map == [] and json.loads(ours.labels_data) == []
    exported = _exported(emulator)
    volatile = ("taskId", "name", "labelsId", "createdAt", "updatedAt", "metaData")
    same = [
        {k: v for k, v in exported[t].items() if k not in volatile}
        | {"series": [{k: v for k, v in s.items() if k != "items"} for s in exported[t]["series"]]}
        for t in ids[:2]
    ]
    assert same[0] == same[1] and not _has_labels(exported[ids[0]])


def test_status_and_the_report_show_the_undo(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    from autolabel.report import build_report

    work = tmp_path / "w"
    run_id = _draft_run(emulator, ct_model, work)
    _undo_cli(emulator, work, capsys, "--run", run_id)
    assert main(["status", "--work", str(work), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"] == {"undone": 3} and status["last_run"]["mode"] == "undo"
    html = build_report(work)
    assert "Undo" in html and html.count("undone · no labels again") >= 3


def test_labels_an_earlier_run_wrote_are_not_dropped_by_undoing_the_later_run(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """autolabel keeps no copy of what it replaced: undoing only the later of two runs
    keeps the task (and says which run's labels were there); undoing both reverts it."""
    work = tmp_path / "w"
    task_id = emulator.task_ids("Label")[0]
    first = _draft_run(emulator, ct_model, work, task_ids=(task_id,))
    second = _draft_run(emulator, ct_model, work, task_ids=(task_id,), force=True)
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        (later,) = undo(p, work, run_ids=(second,)).items
        assert later.status == "kept" and first in later.reason
        assert _has_labels(_exported(emulator)[task_id])
        (both,) = undo(p, work, run_ids=(first, second)).items
    assert both.status == "reverted" and both.runs == (first, second)
    assert not _has_labels(_exported(emulator)[task_id])


def test_a_task_the_key_already_emptied_is_recorded_undone_without_a_write(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """A revert that landed while its reply and its record were lost (the ledger has no
    ``undoing``): the re-read shows the key's empty labels, so undo records it, sends nothing."""
    work = tmp_path / "w"
    task_id = emulator.task_ids("Label")[0]
    run_id = _draft_run(emulator, ct_model, work, task_ids=(task_id,))
    emulator.as_user(emulator.key_user_id).save_labels(task_id)  # empty, by the key
    writes = emulator.key_writes()
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        (item,) = undo(p, work, run_ids=(run_id,)).items
        assert item.status == "already_undone"
        assert emulator.key_writes() == writes
        (again,) = undo(p, work, run_ids=(run_id,)).items
    assert again.status == "already_undone" and emulator.key_writes() == writes
    with Ledger(ledger_path(work), create=False) as ledger:
        states = [e.state for e in ledger.history(task_id)]
    assert states[-2:] == [TaskState.UNDOING, TaskState.UNDONE]


def test_labels_a_script_saved_with_the_same_key_after_the_run_are_kept(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    """After the run, a script using the same API key saves its own labels (no ``Model``
    stamp) on one task through the official SDK: undo keeps that task (autolabel cannot
    tell those labels from a person's) and reverts the other two."""
    work = tmp_path / "work"
    run_id = _draft_run(emulator, ct_model, work)
    ids = emulator.task_ids("Label")
    labels = np.zeros((32, 32, 16), dtype=np.uint8)
    labels[2:9, 2:9, 1:5] = 1
    path = tmp_path / "script.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    series = [{"segmentations": str(path), "segmentMap": {"1": "Liver"}}]
    assert (
        _sdk(emulator).labeling.put_tasks(
            "Label", [{"taskId": ids[0], "series": series}], finalize=False
        )
        == []
    )
    before = _exported(emulator)[ids[0]]

    result = _undo_cli(emulator, work, capsys, "--run", run_id)

    assert _by_task(result) == {ids[0]: "kept", ids[1]: "reverted", ids[2]: "reverted"}
    assert _exported(emulator)[ids[0]] == before


def test_undoing_a_dry_run_or_an_undo_is_a_usage_error_that_records_nothing(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, capsys: Any
) -> None:
    """A dry run wrote nothing and an undo's revert is not a run's write: ``undo --run`` of
    either says so (exit 2) instead of recording an empty undo."""
    work = tmp_path / "work"
    dry = _draft_run(emulator, ct_model, work, mode="dry-run")
    run_id = _draft_run(emulator, ct_model, work)
    undone = _undo_cli(emulator, work, capsys, "--run", run_id)["undo_run_id"]
    flags = [*emulator.cli_flags(), "--work", str(work)]
    for chosen, why in ((dry, "a dry run"), (undone, "an undo")):
        capsys.readouterr()
        assert main(["undo", *flags, "--run", chosen]) == 2
        assert why in capsys.readouterr().err
    with Ledger(ledger_path(work), create=False) as ledger:
        assert [r.mode for r in ledger.runs()] == ["undo", "draft", "dry-run"]

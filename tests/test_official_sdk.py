"""The official redbrick-sdk (2.35.4), unchanged, against the emulator over real sockets.

Each test runs a snippet of RedBrick's "Programmatic Label & Review" docs and checks the
emulator's end state: where the task is, who holds it, which labels were stored, and how
many writes reached the server.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle

redbrick = pytest.importorskip("redbrick")

SHAPE = (32, 32, 16)


@pytest.fixture
def project(emulator: EmulatorHandle) -> Any:
    """The SDK's project object bound to the emulator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        return redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )


@pytest.fixture
def label_file(tmp_path: Path) -> Path:
    """A label map with Liver (1) and Spleen (2) on the seeded studies' voxel grid."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:12, 4:12, 2:6] = 1
    labels[18:26, 18:26, 8:12] = 2
    path = tmp_path / "prediction.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path


def _series(label_file: Path, segment_map: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "segmentations": str(label_file),
            "segmentMap": segment_map or {"1": "Liver", "2": "Spleen"},
        }
    ]


def _stored_label_map(emulator: EmulatorHandle, task_id: str) -> np.ndarray:
    (data,) = emulator.label_files(task_id)
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    image = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(image.dataobj)


def test_get_project_reads_stages_and_taxonomy(project: Any, emulator: EmulatorHandle) -> None:
    """get_project builds the project: its label/review stages and the CT taxonomy."""
    assert project.project_id == emulator.project_id
    assert [s.stage_name for s in project.stages][:2] == ["Label", "Review_1"]
    categories = {o["category"] for o in project.taxonomy["objectTypes"]}
    assert {"Body", "Lung", "Bone", "Liver", "Spleen", "Kidney"} <= categories
    assert project.context.key_id == emulator.key_user_id


def test_list_tasks_assigned_to_the_key_and_search_by_name(
    project: Any, emulator: EmulatorHandle
) -> None:
    """QUEUED tasks of the key in Label are the seeded ones; a name search finds one."""
    mine = list(
        project.export.list_tasks(
            search=redbrick.TaskFilters.QUEUED,
            stage_name="Label",
            user_id=project.context.key_id,
            limit=None,
        )
    )
    assert sorted(t["taskId"] for t in mine) == sorted(emulator.task_ids("Label"))
    found = list(project.export.list_tasks(task_name="phantom-001", exact_match=True))
    assert [t["name"] for t in found] == ["phantom-001"]
    assert list(project.export.list_tasks(task_name="phantom-0", limit=None)).__len__() == 3


def test_put_tasks_draft_keeps_the_task_in_label(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """finalize=False stores the labels and the file; the task stays in Label, STAGED."""
    task_id = emulator.task_ids("Label")[0]
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": _series(label_file)}], finalize=False
    )
    assert failed == []
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.assigned_to) == (
        "Label",
        "STAGED",
        emulator.key_user_id,
    )
    assert {
        (label["category"], label["dicom"]["instanceid"]) for label in emulator.labels(task_id)
    } == {
        ("Liver", 1),
        ("Spleen", 2),
    }
    stored = _stored_label_map(emulator, task_id)
    assert np.array_equal(stored, np.asarray(nib.load(label_file).dataobj))
    assert emulator.write_count(task_id, "putManualLabelingTaskAndLabels") == 1
    drafts = list(
        project.export.list_tasks(
            search=redbrick.TaskFilters.DRAFT, stage_name="Label", user_id=project.context.key_id
        )
    )
    assert [t["taskId"] for t in drafts] == [task_id]


def test_put_tasks_submit_moves_the_task_to_review(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """finalize=True (the default) submits: the task leaves Label for Review_1, unassigned."""
    task_id = emulator.task_ids("Label")[1]
    segment_map = {"1": {"category": "Liver", "attributes": {}}, "2": 4}  # name and classId
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": _series(label_file, segment_map)}]
    )
    assert failed == []
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.assigned_to) == ("Review_1", "UNASSIGNED", None)
    assert [label["category"] for label in emulator.labels(task_id)] == ["Liver", "Spleen"]
    assert emulator.latest_labels(task_id).finished  # type: ignore[union-attr]


def _to_review(project: Any, emulator: EmulatorHandle, label_file: Path) -> str:
    task_id = emulator.task_ids("Label")[0]
    project.labeling.put_tasks("Label", [{"taskId": task_id, "series": _series(label_file)}])
    emulator.assign(task_id, emulator.key_user_id)
    return task_id


def test_review_accept_sends_the_task_to_ground_truth(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """review_result=True passes the task to Ground Truth (END) with its labels."""
    task_id = _to_review(project, emulator, label_file)
    project.review.put_tasks("Review_1", [{"taskId": task_id}], review_result=True)
    task = emulator.task(task_id)
    assert (task.stage_name, task.review_state) == ("END", "PASSED")
    assert len(emulator.labels(task_id)) == 2


def test_review_reject_sends_the_task_back_to_label(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """review_result=False routes through Failed_Review_1 back to Label, to its labeler."""
    task_id = _to_review(project, emulator, label_file)
    project.review.put_tasks(
        "Review_1", [{"taskId": task_id}], review_result=False, review_comment="edges"
    )
    task = emulator.task(task_id)
    assert (task.stage_name, task.review_state) == ("Label", "FAILED")
    assert task.assigned_to == emulator.key_user_id  # back to who labeled it
    failed = list(
        project.export.list_tasks(search=redbrick.TaskFilters.FAILED, stage_name="Review_1")
    )
    assert [t["taskId"] for t in failed] == [task_id]


def test_review_accept_with_correction_replaces_the_labels(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """A review put_tasks with series stores the corrected labels and passes the task."""
    task_id = _to_review(project, emulator, label_file)
    corrected = {"1": "Kidney", "2": "Spleen"}
    project.review.put_tasks(
        "Review_1",
        [{"taskId": task_id, "series": _series(label_file, corrected)}],
        review_result=True,
    )
    task = emulator.task(task_id)
    assert (task.stage_name, task.review_state) == ("END", "CORRECTED")
    assert [label["category"] for label in emulator.labels(task_id)] == ["Kidney", "Spleen"]
    assert len(emulator.label_history(task_id)) == 2


def test_move_tasks_to_start_and_export(
    project: Any, emulator: EmulatorHandle, label_file: Path, tmp_path: Path
) -> None:
    """A Ground Truth task exports with its mask, then move_tasks_to_start puts it in Label."""
    task_id = _to_review(project, emulator, label_file)
    project.review.put_tasks("Review_1", [{"taskId": task_id}], review_result=True)
    (exported,) = list(project.export.export_tasks(task_id=task_id, destination=str(tmp_path)))
    assert exported["currentStageName"] == "END"
    mask_path = Path(exported["series"][0]["segmentations"])
    assert mask_path.is_absolute() and mask_path.is_relative_to(tmp_path)
    mask = np.asarray(nib.load(mask_path).dataobj)
    assert np.array_equal(mask, np.asarray(nib.load(label_file).dataobj))
    assert {v["category"] for v in exported["series"][0]["segmentMap"].values()} == {
        "Liver",
        "Spleen",
    }
    project.labeling.move_tasks_to_start(task_ids=[task_id])
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.assigned_to) == ("Label", "UNASSIGNED", None)


def test_export_with_files_downloads_the_dicom_series(
    project: Any, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """with_files=True fetches every seeded DICOM slice through presigned URLs."""
    task_id = emulator.task_ids()[0]
    (exported,) = list(
        project.export.export_tasks(task_id=task_id, with_files=True, destination=str(tmp_path))
    )
    files = [Path(p) for p in exported["series"][0]["items"]]
    assert len(files) == SHAPE[2]
    assert all(p.is_relative_to(tmp_path) and p.is_file() for p in files)
    assert all(p.read_bytes()[128:132] == b"DICM" for p in files)


def test_server_rules_reject_what_they_should(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """Each rule refusal surfaces as redbrick.GraphQLError naming the task, and changes nothing."""
    label_task, other_task, _ = emulator.task_ids("Label")
    emulator.assign(other_task, emulator.human_email)
    cases = [
        (lambda: project.labeling.put_tasks("Label", [{"taskId": other_task, "series": _series(label_file)}]),
         other_task, "not assigned to you"),
        (lambda: project.review.put_tasks("Review_1", [{"taskId": label_task}], review_result=True),
         label_task, "not in stage Review_1"),
        (lambda: project.labeling.move_tasks_to_start(task_ids=[label_task]),
         label_task, "only Ground Truth tasks can be moved to start"),
        (lambda: project.labeling.put_tasks("Label", [{"taskId": other_task}], existing_labels=True),
         other_task, "not assigned to you"),
    ]  # fmt: skip
    for call, task_id, rule in cases:
        before = emulator.task(task_id)
        with pytest.raises(redbrick.GraphQLError) as caught:
            call()
        assert task_id in str(caught.value) and rule in str(caught.value)
        after = emulator.task(task_id)
        assert (after.stage_name, after.state) == (before.stage_name, before.state)
    refused = [e for e in emulator.events() if not e.accepted]
    assert len(refused) == len(cases)
    assert all(e.message and e.task_id in e.message for e in refused)


def test_unknown_category_fails_the_task_without_a_write(
    project: Any, emulator: EmulatorHandle, label_file: Path
) -> None:
    """A segmentMap category missing from the taxonomy is refused by the converter."""
    task_id = emulator.task_ids("Label")[0]
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": _series(label_file, {"1": "Heart", "2": "Liver"})}]
    )
    assert [t["taskId"] for t in failed] == [task_id]
    assert emulator.write_count(task_id) == 0
    assert emulator.task(task_id).state == "ASSIGNED"


def test_second_person_saves_a_draft_over_api_key(
    emulator: EmulatorHandle, label_file: Path
) -> None:
    """A minted user with its own key works through the SDK under the same rules."""
    person = emulator.add_user("Rita Reviewer", email="rita@example.com")
    task_id = emulator.task_ids("Label")[2]
    emulator.assign(task_id, person.email)
    assert person.api_key is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = redbrick.get_project(
            emulator.org_id, emulator.project_id, person.api_key, url=emulator.url
        )
    theirs.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": _series(label_file)}], finalize=False
    )
    latest = emulator.latest_labels(task_id)
    assert latest is not None and latest.created_by == person.user_id
    assert emulator.task(task_id).state == "STAGED"


def test_pagination_past_one_page(emulator_factory: Any, tmp_path: Path) -> None:
    """list_tasks and export_tasks walk every page (5 per page) of a 12-task project."""
    emulator = emulator_factory(studies=12, shape=(16, 16, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        project = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    listed = list(project.export.list_tasks(limit=None, concurrency=5))
    assert sorted(t["taskId"] for t in listed) == sorted(emulator.task_ids())
    assert len(listed) == 12
    exported = list(
        project.export.export_tasks(
            stage_name="Label", without_masks=True, destination=str(tmp_path)
        )
    )
    assert len(exported) == 12
    assert json.dumps(exported)  # plain JSON all the way down


def test_sdk_sees_injected_faults(project: Any, emulator: EmulatorHandle, label_file: Path) -> None:
    """Faults reach the SDK as the real failures: 429, GraphQL error, presigned PUT 403."""
    from redbrick.common.exceptions import RateLimitError

    task_id = emulator.task_ids("Label")[0]
    emulator.add_fault("tasksListSDK", "status", status=429, retry_after=1)
    with pytest.raises(RateLimitError):
        list(project.export.list_tasks(stage_name="Label"))
    emulator.add_fault("putTaskAndLabelsSDK", "graphql_error", message="database is busy")
    with pytest.raises(redbrick.GraphQLError, match="database is busy"):
        project.labeling.put_tasks("Label", [{"taskId": task_id, "series": _series(label_file)}])
    assert emulator.latest_labels(task_id) is None  # the mutation never ran
    emulator.add_fault("storage:PUT", "status", status=403, message="signature expired")
    with pytest.raises(ConnectionError, match="Error in uploading"):
        project.labeling.put_tasks("Label", [{"taskId": task_id, "series": _series(label_file)}])
    assert emulator.write_count(task_id) == 0
    assert [f["fired"] for f in emulator.faults()] == [1, 1, 1]
    project.labeling.put_tasks("Label", [{"taskId": task_id, "series": _series(label_file)}])
    assert emulator.task(task_id).stage_name == "Review_1"

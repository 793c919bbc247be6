"""The RedBrick client against the emulator, over real sockets: every operation end to end.

Each test gets a fresh copy of one seeded emulator directory (a project Label -> Review_1 ->
Ground Truth with seven phantom CT tasks assigned to the API key), served on a free port.
Assertions read the emulator's end state, not call counts.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator.handle import EmulatorHandle, serve_in_thread
from autolabel.emulator.recorder import recording_proxy
from autolabel.emulator.seed import seed
from autolabel.errors import AuthError, NotFoundError, TaskStateError
from autolabel.redbrick import Project, RetryPolicy, TaskFilters, get_project

TASKS = 7
FAST = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seeded")
    seed(folder, studies=TASKS, shape=(16, 16, 8))
    return folder


@pytest.fixture
def served(seeded: Path, tmp_path: Path) -> Iterator[EmulatorHandle]:
    data = tmp_path / "emulator"
    shutil.copytree(seeded, data)
    with serve_in_thread(data) as handle:
        yield handle


@pytest.fixture
def project(served: EmulatorHandle) -> Iterator[Project]:
    with get_project(
        served.org_id, served.project_id, served.api_key, url=served.url, retry=FAST
    ) as p:
        yield p


def label_file(folder: Path, values: tuple[int, ...] = (1, 2), name: str = "seg.nii.gz") -> Path:
    """A small label map on the phantom grid with the given instance values."""
    data = np.zeros((16, 16, 8), dtype=np.uint8)
    for n, value in enumerate(values):
        data[2 + 4 * n : 5 + 4 * n, 4:10, 2:6] = value
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def series(path: Path) -> list[dict[str, object]]:
    return [{"segmentations": str(path), "segmentMap": {"1": "Liver", "2": {"category": "Spleen"}}}]


def test_get_project_reads_stages_taxonomy_and_key(
    project: Project, served: EmulatorHandle
) -> None:
    """get_project gives the name, the workflow, the taxonomy and the key's user id."""
    assert project.name == "CT pre-labeling"
    assert [s.stage_name for s in project.stages if s.is_label] == ["Label"]
    assert [s.stage_name for s in project.stages if s.is_review] == ["Review_1"]
    assert project.output_stage_name == "Output"
    categories = {o["category"] for o in project.taxonomy["objectTypes"]}
    assert {"Liver", "Spleen", "Kidney"} <= categories
    assert project.context.key_id == served.key_user_id == project.current_user_id
    members = project.client.members(served.org_id)
    assert served.human_email in {m["user"]["email"] for m in members}
    assert project.label_storage()["storageId"]


def test_unknown_project_is_not_found(served: EmulatorHandle) -> None:
    """A project id the org does not have raises NotFoundError, not a generic error."""
    with pytest.raises(NotFoundError):
        get_project(
            served.org_id, "00000000-0000-0000-0000-000000000000", served.api_key, url=served.url
        )


def test_unknown_key_is_refused_without_echoing_it(served: EmulatorHandle) -> None:
    """A well-formed but unknown key (a fast HTTP 500 on the first call, as RedBrick answers
    it) raises AuthError after one request, not four; the message does not contain the key."""
    wrong = "k" * 43
    with recording_proxy(served.url) as proxy, pytest.raises(AuthError) as caught:
        get_project(served.org_id, served.project_id, wrong, url=proxy.url)
    assert [(e.status, e.graphql()["query"].split("(")[0].strip()) for e in proxy.exchanges] == [
        (500, "query getProjectSDK")
    ]
    assert caught.value.status == 500
    assert "refuses an API key" in str(caught.value)
    assert wrong not in str(caught.value)


def test_server_error_after_the_key_worked_is_retried(
    project: Project, served: EmulatorHandle
) -> None:
    """Once a call succeeded the key is good: a later fast 500 is a server fault, retried."""
    rule = served.add_fault("taskSDK", "status", status=500, times=1)
    task_id = served.task_ids("Label")[0]
    assert project.get_task(task_id).task_id == task_id
    assert rule.fired == 1


def test_assigned_tasks_are_listed_across_pages(project: Project, served: EmulatorHandle) -> None:
    """Every task assigned to the key is listed once, even with pages smaller than the total."""
    listed = list(project.list_assigned_tasks("Label", page_size=2))
    assert sorted(t.task_id for t in listed) == sorted(served.task_ids("Label"))
    assert len(listed) == TASKS
    assert all(t.assignee == served.key_user_id and t.stage_name == "Label" for t in listed)
    assert not any(t.items_loaded for t in listed)
    first_three = list(
        project.export.list_tasks(
            stage_name="Label", user_id=project.context.key_id, limit=3, concurrency=2
        )
    )
    assert len(first_three) == 3
    assert first_three[0]["assignees"][0]["user"] == "API Key - autolabel"


def test_docs_style_task_queries(project: Project, served: EmulatorHandle) -> None:
    """QUEUED for the key, UNASSIGNED, DRAFT and GROUNDTRUTH filters select the right tasks."""
    ids = served.task_ids("Label")
    served.assign(ids[0], None)
    project.save_labels(ids[1], "Label", series(label_file(Path(served.data_dir))))
    queued = {t["taskId"] for t in project.labeling.get_tasks("Label")}
    assert queued == set(ids[1:])
    unassigned = [
        t["taskId"]
        for t in project.export.list_tasks(search=TaskFilters.UNASSIGNED, stage_name="Label")
    ]
    assert unassigned == [ids[0]]
    drafts = [t["taskId"] for t in project.export.list_tasks(search="DRAFT", stage_name="Label")]
    assert drafts == [ids[1]]
    assert list(project.export.list_tasks(search=TaskFilters.GROUNDTRUTH)) == []
    with pytest.raises(ValueError, match="Invalid task filter"):
        list(project.export.list_tasks(search="NOPE"))


def test_search_by_task_name(project: Project) -> None:
    """Exact name search finds one task; a prefix finds all that start with it."""
    (exact,) = project.find_tasks("phantom-003")
    assert exact.name == "phantom-003"
    assert len(project.find_tasks("phantom-00", exact=False)) == TASKS
    assert project.find_tasks("phantom-00") == []
    found = list(project.export.search_tasks("phantom-005", exact_match=True))
    assert [t["name"] for t in found] == ["phantom-005"]
    by_id = list(project.export.list_tasks(task_id=exact.task_id))
    assert [t["taskId"] for t in by_id] == [exact.task_id]


def test_get_task_and_download_items(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """Items download per series, in item order, byte for byte, with no partial files left."""
    task_id = served.task_ids("Label")[2]
    task = project.get_task(task_id)
    assert task.items_loaded and task.name.startswith("phantom-")
    assert task.meta_data is not None and task.meta_data["source"] == "phantom"
    (only,) = project.download_items(task, tmp_path / "items")
    assert only.index == 0 and only.name == task.series[0].name
    assert len(only.paths) == len(task.items) == 8
    for item, path in zip(task.items, only.paths, strict=True):
        assert path.read_bytes() == served.read_file(item)
    assert sorted(p.name for p in (tmp_path / "items").rglob("*")) == sorted(
        [only.paths[0].parent.name, *(p.name for p in only.paths)]
    )
    listed = next(project.list_assigned_tasks("Label"))
    assert len(project.download_items(listed, tmp_path / "again")[0].paths) == 8


def test_unknown_task_is_not_found(project: Project) -> None:
    """get_task of an id that does not exist raises NotFoundError."""
    with pytest.raises(NotFoundError):
        project.get_task("00000000-0000-0000-0000-000000000000")


def test_draft_then_submit_stores_the_label_file(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """A draft keeps the task in Label with our file and categories; finalize moves it on."""
    task_id = served.task_ids("Label")[0]
    path = label_file(tmp_path)
    project.save_labels(task_id, "Label", series(path))
    record = served.task(task_id)
    assert record.stage_name == "Label" and record.state == "STAGED"
    assert served.label_files(task_id) == [path.read_bytes()]
    assert sorted(label["category"] for label in served.labels(task_id)) == ["Liver", "Spleen"]
    saved = project.get_task(task_id).labels
    assert saved is not None and saved.created_by == served.key_user_id
    # label_storage_id=None: labels go to the project's label storage (getLabelStorage)
    tasks = [{"taskId": task_id, "series": series(path)}]
    assert project.labeling.put_tasks("Label", tasks, label_storage_id=None) == []
    assert served.task(task_id).stage_name == "Review_1"


def test_put_tasks_reports_failures_and_carries_on(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """One refused task does not abort the batch: it comes back with the server's reason."""
    ok, stolen = served.task_ids("Label")[:2]
    served.assign(stolen, served.human_email)
    path = label_file(tmp_path)
    tasks = [
        {"taskId": ok, "series": series(path)},
        {"taskId": stolen, "series": series(path)},
        {"series": series(path)},
        {"taskId": ok},
    ]
    failed = project.labeling.put_tasks("Label", tasks, finalize=False)
    reasons = {str(f.get("taskId")): f["error"] for f in failed}
    assert set(reasons) == {stolen, "None", ok}
    assert "TaskStateError" in reasons[stolen] and "not assigned" in reasons[stolen]
    assert served.task(ok).state == "STAGED"
    assert served.latest_labels(stolen) is None
    with pytest.raises(ValueError, match="not a Label stage"):
        project.labeling.put_tasks("Review_1", tasks)
    with pytest.raises(ValueError, match="label_validate=True"):
        project.labeling.put_tasks("Label", tasks, label_validate=True)
    (no_decision,) = project.review.put_tasks("Review_1", [{"taskId": ok}])
    assert "no review_result and no series" in no_decision["error"]


def test_missing_label_file_fails_only_that_task(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """A label path that does not exist is a per-task failure, and nothing is saved for it."""
    task_id = served.task_ids("Label")[0]
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": series(tmp_path / "nope.nii.gz")}]
    )
    assert len(failed) == 1 and "no label file" in failed[0]["error"]
    assert served.latest_labels(task_id) is None


def test_review_accept_reject_correct_and_back_to_start(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """Accept goes to Ground Truth, reject back to Label, correction replaces the labels."""
    accept, reject, correct = served.task_ids("Label")[:3]
    path = label_file(tmp_path)
    assert (
        project.labeling.put_tasks(
            "Label", [{"taskId": t, "series": series(path)} for t in (accept, reject, correct)]
        )
        == []
    )
    assigned = project.review.assign_tasks([accept, reject, correct], email=project.context.key_id)
    assert {a["taskId"] for a in assigned} == {accept, reject, correct}
    assert project.review.put_tasks("Review_1", [{"taskId": accept}], review_result=True) == []
    assert (
        project.review.put_tasks(
            "Review_1", [{"taskId": reject}], review_result=False, review_comment="edges"
        )
        == []
    )
    corrected = label_file(tmp_path, values=(1,), name="fix.nii.gz")
    fix = [
        {
            "taskId": correct,
            "series": [{"segmentations": str(corrected), "segmentMap": {"1": "Kidney"}}],
        }
    ]
    assert project.review.put_tasks("Review_1", fix) == []
    assert served.task(accept).stage_name == "END"
    assert served.task(reject).stage_name == "Label"
    assert served.task(correct).stage_name == "END"
    assert [label["category"] for label in served.labels(correct)] == ["Kidney"]
    assert served.label_files(correct) == [corrected.read_bytes()]
    with pytest.raises(TaskStateError, match="Ground Truth"):
        project.labeling.move_tasks_to_start(task_ids=[reject])
    project.labeling.move_tasks_to_start(task_ids=[accept])
    assert served.task(accept).stage_name == "Label"
    assert served.task(accept).assigned_to is None


def test_submit_existing_labels(project: Project, served: EmulatorHandle, tmp_path: Path) -> None:
    """existing_labels=True submits a draft as it is, without uploading anything."""
    task_id = served.task_ids("Label")[0]
    project.save_labels(task_id, "Label", series(label_file(tmp_path)))
    assert project.labeling.put_tasks("Label", [{"taskId": task_id}], existing_labels=True) == []
    assert served.task(task_id).stage_name == "Review_1"
    # One labels write (the draft) and one submit that sent no new labels.
    assert served.write_count(task_id, "putManualLabelingTaskAndLabels") == 1
    assert served.write_count(task_id, "putManualLabelingTask") == 1
    assert served.label_files(task_id) == [label_file(tmp_path).read_bytes()]


def test_assign_to_a_person_and_back_to_the_key(project: Project, served: EmulatorHandle) -> None:
    """assign_tasks moves a task to a human (it leaves the key's queue) and back."""
    task_id = served.task_ids("Label")[0]
    project.labeling.assign_tasks([task_id], email=served.human_email)
    assert task_id not in {t.task_id for t in project.list_assigned_tasks("Label")}
    project.labeling.assign_tasks([task_id], email=project.context.key_id)
    assert served.task(task_id).assigned_to == served.key_user_id
    project.labeling.assign_tasks([task_id])
    assert served.task(task_id).assigned_to is None


def test_export_tasks_with_labels_and_files(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """export_tasks(task_id=...) gives the saved labels and downloads their file and items."""
    task_id = served.task_ids("Label")[0]
    path = label_file(tmp_path)
    project.save_labels(task_id, "Label", series(path))
    (exported,) = project.export.export_tasks(
        task_id=task_id, with_labels=True, with_files=True, destination=tmp_path / "out"
    )
    assert exported["status"] == "STAGED"
    assert sorted(label["category"] for label in exported["labels"]) == ["Liver", "Spleen"]
    assert Path(exported["labelsMap"][0]["labelName"]).read_bytes() == path.read_bytes()
    assert all(Path(item).is_file() for item in exported["series"][0]["items"])
    assert exported["series"][0]["segmentMap"] == {
        "1": {"category": "Liver"},
        "2": {"category": "Spleen"},
    }
    assert Path(exported["series"][0]["segmentations"]).read_bytes() == path.read_bytes()
    every = list(project.export.export_tasks(concurrency=3, destination=tmp_path / "all"))
    assert len(every) == TASKS


def test_state_survives_a_restart(seeded: Path, tmp_path: Path) -> None:
    """A draft saved before the emulator restarts is read back after it, with its file."""
    data = tmp_path / "emulator"
    shutil.copytree(seeded, data)
    path = label_file(tmp_path)
    with serve_in_thread(data) as first:
        task_id = first.task_ids("Label")[0]
        with get_project(first.org_id, first.project_id, first.api_key, url=first.url) as project:
            project.save_labels(task_id, "Label", series(path))
    with serve_in_thread(data) as again:
        project = get_project(again.org_id, again.project_id, again.api_key, url=again.url)
        task = project.get_task(task_id)
        got = project.download_labels(task, tmp_path / "labels")
        project.close()
    assert task.state == "STAGED"
    assert task.labels is not None
    assert sorted(label["category"] for label in task.labels.labels) == ["Liver", "Spleen"]
    assert (
        hashlib.sha256(got[0].read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    )


def test_provenance_goes_only_into_taxonomy_attributes(project: Project) -> None:
    """Provenance becomes label attributes only where the taxonomy defines that attribute."""
    project.taxonomy = {
        "objectTypes": [
            {"category": "Liver", "attributes": [{"name": "Model"}]},
            {"category": "Spleen", "attributes": []},
        ]
    }
    out = project.with_provenance(
        [{"segmentations": "x", "segmentMap": {"1": "Liver", "2": {"category": "Spleen"}}}],
        {"Model": "ct-threshold 1.0", "Run": "r1"},
    )
    assert out[0]["segmentMap"] == {
        "1": {"category": "Liver", "attributes": {"Model": "ct-threshold 1.0"}},
        "2": {"category": "Spleen"},
    }


def test_logs_at_debug_carry_no_key(
    project: Project, served: EmulatorHandle, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Operations log what they do, and the key is in none of it nor in any repr."""
    caplog.set_level(logging.DEBUG)
    task_id = served.task_ids("Label")[0]
    project.save_labels(task_id, "Label", series(label_file(tmp_path)))
    project.download_items(project.get_task(task_id), tmp_path / "d")
    assert "getProjectSDK" in caplog.text or "taskSDK" in caplog.text
    key = served.api_key
    assert key not in caplog.text
    for thing in (
        project,
        project.client,
        project.client.transport,
        project.labeling,
        project.export,
        project.context,
    ):
        assert key not in repr(thing)


def test_unknown_category_fails_the_task_with_the_servers_reason(
    project: Project, served: EmulatorHandle, tmp_path: Path
) -> None:
    """RedBrick's conversion refuses a category the taxonomy lacks; the task fails, nothing saved."""
    task_id = served.task_ids("Label")[0]
    bad = [
        {"segmentations": str(label_file(tmp_path)), "segmentMap": {"1": "Liver", "2": "Pancreas"}}
    ]
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": task_id, "series": bad}], finalize=False
    )
    assert len(failed) == 1 and failed[0]["taskId"] == task_id
    assert "ConversionError" in failed[0]["error"] and "Pancreas" in failed[0]["error"]
    assert served.latest_labels(task_id) is None

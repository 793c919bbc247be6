"""Server rules, routing, task listing and the series converter of the emulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from autolabel.emulator import EmulatorHandle, RuleViolation, serve_in_thread

PUT_LABELS = """
mutation putTaskAndLabelsSDK($orgId: UUID!, $projectId: UUID!, $stageName: String!,
  $taskId: UUID!, $finished: Boolean!, $labelsData: String, $labelsMap: [LabelMapInput]) {
  putManualLabelingTaskAndLabels(orgId: $orgId, projectId: $projectId, stageName: $stageName,
    taskId: $taskId, elapsedTimeMs: 0, finished: $finished, labelsData: $labelsData,
    labelsMap: $labelsMap) { ok }
}"""

REVIEW = """
mutation putReviewTaskSDK($orgId: UUID!, $projectId: UUID!, $stageName: String!,
  $reviewVal: Boolean!, $taskId: UUID!) {
  putExpertReviewTask(orgId: $orgId, projectId: $projectId, stageName: $stageName,
    reviewVal: $reviewVal, taskId: $taskId, elapsedTimeMs: 0) { ok }
}"""

MOVE = """
mutation moveTaskToStartSDK($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {
  moveTaskToStart(orgId: $orgId, projectId: $projectId, taskId: $taskId) { ok }
}"""

LIST = """
query tasksListSDK($orgId: UUID!, $projectId: UUID!, $stageName: String, $taskSearch: String,
  $manualLabelingFilters: TasksFilter, $first: Int, $after: String) {
  genericTasks(orgId: $orgId, projectId: $projectId, stageName: $stageName,
    taskSearch: $taskSearch, manualLabelingFilters: $manualLabelingFilters, first: $first,
    after: $after) {
    entries { taskId currentStageName datapoint { name }
      currentStageSubTask { ... on LabelingTask { state assignedTo { userId email } } } }
    cursor
  }
}"""

CONVERT = """
query($original: String!) {
  validateAndConvertToImportFormat(original: $original, convert: true) { isValid error converted }
}"""


def _ids(emulator: EmulatorHandle, **more: Any) -> dict[str, Any]:
    return {"orgId": emulator.org_id, "projectId": emulator.project_id, **more}


def _put(emulator: EmulatorHandle, task_id: str, *, finished: bool, stage: str = "Label",
         user: str | None = None) -> dict[str, Any]:  # fmt: skip
    labels = json.dumps([{"category": "Liver", "classid": 3, "dicom": {"instanceid": 1}}])
    variables = _ids(
        emulator, stageName=stage, taskId=task_id, finished=finished, labelsData=labels
    )
    return emulator.graphql(PUT_LABELS, variables, user=user)


def _error(answer: dict[str, Any]) -> str:
    assert "errors" in answer, answer
    return str(answer["errors"][0]["message"])


def test_draft_then_submit_then_reject_round_trip(emulator: EmulatorHandle) -> None:
    """Draft keeps the task (STAGED); submit routes to Review_1; reject returns it to its labeler."""
    task_id = emulator.task_ids("Label")[0]
    assert _put(emulator, task_id, finished=False) == {
        "data": {"putManualLabelingTaskAndLabels": {"ok": True}}
    }
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.assigned_to) == (
        "Label",
        "STAGED",
        emulator.key_user_id,
    )
    _put(emulator, task_id, finished=True)
    assert (emulator.task(task_id).stage_name, emulator.task(task_id).assigned_to) == (
        "Review_1",
        None,
    )
    reviewer = emulator.as_user(emulator.human_email)
    reviewer.claim(task_id)
    reviewer.review(task_id, passed=False)
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.review_state) == ("Label", "ASSIGNED", "FAILED")
    assert task.assigned_to == emulator.key_user_id
    assert [(e.operation, e.finished, e.review_val) for e in emulator.events(task_id)] == [
        ("putManualLabelingTaskAndLabels", False, None),
        ("putManualLabelingTaskAndLabels", True, None),
        ("assignTasksMultipleUsers", None, None),
        ("putExpertReviewTask", None, False),
    ]
    assert emulator.write_counts() == {task_id: 4}


def test_rule_violations_name_the_task_and_the_rule(emulator: EmulatorHandle) -> None:
    """Wrong stage, wrong assignee, review outside review stages, move outside Ground Truth."""
    mine, theirs, _ = emulator.task_ids("Label")
    emulator.assign(theirs, emulator.human_email)
    refusals = {
        "not assigned to you": _error(_put(emulator, theirs, finished=True)),
        "is not in stage Review_1": _error(_put(emulator, mine, finished=True, stage="Review_1")),
        "is not a review stage": _error(
            emulator.graphql(REVIEW, _ids(emulator, stageName="Label", reviewVal=True, taskId=mine))
        ),
        "only Ground Truth tasks": _error(emulator.graphql(MOVE, _ids(emulator, taskId=mine))),
    }
    for rule, message in refusals.items():
        assert rule in message and (mine in message or theirs in message), message
    assert emulator.write_counts() == {theirs: 1}  # only the admin's assignment went through
    assert sum(not e.accepted for e in emulator.events()) == 4
    with pytest.raises(RuleViolation, match="not assigned to you"):
        emulator.as_user(emulator.human_email).save_labels(mine)


def test_label_files_must_have_been_uploaded(emulator: EmulatorHandle) -> None:
    """A labelsMap entry naming a file that was never PUT is refused, naming the file."""
    task_id = emulator.task_ids("Label")[0]
    variables = _ids(
        emulator, stageName="Label", taskId=task_id, finished=False, labelsData="[]",
        labelsMap=[{"labelName": "nowhere/0.nii.gz", "seriesIndex": 0}],
    )  # fmt: skip
    message = _error(emulator.graphql(PUT_LABELS, variables))
    assert "nowhere/0.nii.gz" in message and task_id in message
    assert emulator.latest_labels(task_id) is None


def test_ground_truth_and_move_to_start(emulator: EmulatorHandle) -> None:
    """Accepted tasks reach END (COMPLETED, unassigned); moveTaskToStart brings them to Label."""
    task_id = emulator.task_ids("Label")[0]
    _put(emulator, task_id, finished=True)
    emulator.assign(task_id, emulator.key_user_id)
    emulator.graphql(REVIEW, _ids(emulator, stageName="Review_1", reviewVal=True, taskId=task_id))
    task = emulator.task(task_id)
    assert (task.stage_name, task.state, task.assigned_to) == ("END", "COMPLETED", None)
    listed = emulator.graphql(LIST, _ids(emulator, stageName="Output", manualLabelingFilters={}))
    assert [e["taskId"] for e in listed["data"]["genericTasks"]["entries"]] == [task_id]
    assert emulator.graphql(MOVE, _ids(emulator, taskId=task_id))["data"]["moveTaskToStart"]["ok"]
    assert (emulator.task(task_id).stage_name, emulator.task(task_id).state) == (
        "Label",
        "UNASSIGNED",
    )


def _listed(emulator: EmulatorHandle, **variables: Any) -> list[str]:
    answer = emulator.graphql(LIST, _ids(emulator, **variables))
    return [e["datapoint"]["name"] for e in answer["data"]["genericTasks"]["entries"]]


def test_generic_tasks_filters(emulator: EmulatorHandle) -> None:
    """stageName, taskSearch (prefix, exact, id) and userId (id, email, null) filter as RedBrick."""
    first, second, third = emulator.task_ids()
    emulator.assign(second, emulator.human_email)
    emulator.assign(third, None)
    key = emulator.key_user_id
    assert _listed(emulator, stageName="Label", manualLabelingFilters={"userId": key}) == [
        "phantom-000"
    ]
    assert _listed(emulator, manualLabelingFilters={"userId": emulator.human_email}) == [
        "phantom-001"
    ]
    assert _listed(emulator, stageName="Label", manualLabelingFilters={"userId": None}) == [
        "phantom-002"
    ]
    assert _listed(emulator, taskSearch="phantom-00") == [
        "phantom-000",
        "phantom-001",
        "phantom-002",
    ]
    assert _listed(emulator, taskSearch='"phantom-00"') == []
    assert _listed(emulator, taskSearch='"phantom-001"') == ["phantom-001"]
    assert _listed(emulator, taskSearch=third, manualLabelingFilters={"taskId": third}) == [
        "phantom-002"
    ]
    assert _listed(emulator, stageName="Review_1") == []
    _put(emulator, first, finished=False)
    assert _listed(emulator, stageName="Label", manualLabelingFilters={"status": "STAGED"}) == [
        "phantom-000"
    ]


def test_cursor_pagination_walks_every_task_once(emulator: EmulatorHandle) -> None:
    """first=2 gives pages of two with an opaque cursor, null after the last page."""
    names, cursor, pages = [], None, 0
    while True:
        answer = emulator.graphql(LIST, _ids(emulator, first=2, after=cursor))
        page = answer["data"]["genericTasks"]
        names += [e["datapoint"]["name"] for e in page["entries"]]
        cursor, pages = page["cursor"], pages + 1
        if cursor is None:
            break
    assert (names, pages) == (["phantom-000", "phantom-001", "phantom-002"], 2)


def _convert(emulator: EmulatorHandle, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    answer = emulator.graphql(CONVERT, {"original": json.dumps(tasks)})
    return dict(answer["data"]["validateAndConvertToImportFormat"])


def test_converter_accepts_every_segment_map_form(emulator: EmulatorHandle) -> None:
    """Name, classId, name path and full object all resolve to the taxonomy's category."""
    task_id = emulator.task_ids()[0]
    segment_map = {
        "1": "Liver",
        "2": 4,
        "3": ["Kidney"],
        "4": {"category": "Lung", "attributes": {}},
    }
    series = {
        "name": "test",
        "items": "https://test",
        "segmentations": "a.nii.gz",
        "segmentMap": segment_map,
    }
    landmark = {"point": {"i": 1, "j": 2, "k": 3}, "category": "Nodule"}
    result = _convert(
        emulator, [{"taskId": task_id, "series": [{**series, "landmarks3d": [landmark]}]}]
    )
    assert result["isValid"] is True and result["error"] is None
    (converted,) = json.loads(result["converted"])
    assert converted["taskId"] == task_id
    assert converted["labelsMap"] == [{"labelName": "a.nii.gz", "seriesIndex": 0}]
    assert converted["items"] == ["https://test"]
    assert converted["seriesInfo"][0]["itemsIndices"] == [0]
    segments = [
        (lab["dicom"]["instanceid"], lab["category"], lab["classid"])
        for lab in converted["labels"]
        if "dicom" in lab
    ]
    assert segments == [(1, "Liver", 3), (2, "Spleen", 4), (3, "Kidney", 5), (4, "Lung", 1)]
    (point,) = [lab for lab in converted["labels"] if "point3d" in lab]
    assert point["point3d"] == {"pointx": 1, "pointy": 2, "pointz": 3}


@pytest.mark.parametrize(
    ("segment_map", "expected"),
    [
        ({"1": "Heart"}, "'Heart' is not a segmentation category"),
        ({"1": 99}, "category 99"),
        ({"1": "Nodule"}, "'Nodule' is not a segmentation category"),  # a landmark type
        ({"x": "Liver"}, "'x' is not an instance id"),
        ({"1": {"attributes": {}}}, "has no category"),
    ],
)
def test_converter_refuses_what_the_taxonomy_lacks(
    emulator: EmulatorHandle, segment_map: dict[str, Any], expected: str
) -> None:
    """An unknown category or a bad instance key gives isValid:false naming the task."""
    task_id = emulator.task_ids()[0]
    result = _convert(emulator, [{"taskId": task_id, "series": [{"segmentMap": segment_map}]}])
    assert result["isValid"] is False and result["converted"] is None
    assert expected in result["error"] and task_id in result["error"]


def test_assign_by_email_api_id_or_nobody(emulator: EmulatorHandle) -> None:
    """assignTasksMultipleUsers resolves emails and API ids; null unassigns; strangers fail."""
    query = (
        "mutation($orgId: UUID!, $projectId: UUID!, $taskIds: [UUID!]!, $emails: [String!]) {"
        " assignTasksMultipleUsers(orgId: $orgId, projectId: $projectId, taskIds: $taskIds,"
        " emails: $emails, currentUser: false, refresh: true) { taskId name stageName } }"
    )
    task_id = emulator.task_ids()[0]
    for who, expected in [
        (emulator.human_email, "human"),
        (emulator.key_user_id, "key"),
        (None, None),
    ]:
        answer = emulator.graphql(
            query, _ids(emulator, taskIds=[task_id], emails=[who] if who else None)
        )
        assert answer["data"]["assignTasksMultipleUsers"][0]["stageName"] == "Label"
        holder = emulator.task(task_id).assigned_to
        if expected == "key":
            assert holder == emulator.key_user_id
        elif expected == "human":
            assert holder is not None and holder != emulator.key_user_id
        else:
            assert holder is None and emulator.task(task_id).state == "UNASSIGNED"
    stranger = emulator.graphql(query, _ids(emulator, taskIds=[task_id], emails=["who@else.org"]))
    assert "who@else.org" in _error(stranger)


def test_create_datapoint_after_item_upload(emulator: EmulatorHandle) -> None:
    """itemsUploadPresign + PUT + createDatapoint makes a task; duplicate names are refused."""
    presign = (
        "query($orgId: UUID!, $projectId: UUID!, $files: [String]!, $fileType: [String]!) {"
        " itemsUploadPresign(orgId: $orgId, projectId: $projectId, files: $files,"
        " fileType: $fileType) { items { presignedUrl filePath fileName } } }"
    )
    answer = emulator.graphql(
        presign, _ids(emulator, files=["ct.nii.gz"], fileType=["application/octet-stream"])
    )
    (item,) = answer["data"]["itemsUploadPresign"]["items"]
    create = (
        "mutation($orgId: UUID!, $projectId: UUID!, $items: [String!]!, $name: String!) {"
        " createDatapoint(orgId: $orgId, projectId: $projectId, items: $items, name: $name,"
        ' storageId: "22222222-2222-2222-2222-222222222222", isGroundTruth: false,'
        ' preAssign: "null") { dpId taskId taskIds } }'
    )
    variables = _ids(emulator, items=[item["filePath"]], name="uploaded-ct")
    assert "not uploaded" in _error(emulator.graphql(create, variables))
    assert requests.put(item["presignedUrl"], data=b"nifti bytes", timeout=10).status_code == 200
    created = emulator.graphql(create, variables)["data"]["createDatapoint"]
    task = emulator.task(created["taskId"])
    assert (task.name, task.stage_name, task.items) == ("uploaded-ct", "Label", [item["filePath"]])
    assert "already exists" in _error(emulator.graphql(create, variables))


def test_state_survives_a_restart(emulator_template: Path, tmp_path: Path) -> None:
    """Tasks, labels, files, users and their keys persist when the server is restarted."""
    data_dir = tmp_path / "data"
    shutil.copytree(emulator_template, data_dir)
    with serve_in_thread(data_dir) as first:
        task_id = first.task_ids()[0]
        person = first.add_user("Pat", email="pat@example.com")
        first.as_user(first.key_user_id).save_labels(task_id, label_file=b"label bytes")
        before = (first.task(task_id), first.labels(task_id), first.label_files(task_id))
        api_key = first.api_key
    with serve_in_thread(data_dir) as again:
        assert (again.task(task_id), again.labels(task_id), again.label_files(task_id)) == before
        assert again.label_files(task_id) == [b"label bytes"]
        assert again.api_key == api_key
        me = requests.post(
            f"{again.url}/graphql/",
            json={"query": "{ me { userId } }"},
            headers={"ApiKey": person.api_key or ""},
            timeout=10,
        )
        assert me.json() == {"data": {"me": {"userId": person.user_id}}}
        assert [e.operation for e in again.events(task_id)] == ["putManualLabelingTaskAndLabels"]


def test_legacy_assign_labeling_tasks(emulator: EmulatorHandle) -> None:
    """assignLabelingTasks (SDK < 2.13) hands the caller free tasks of the stage."""
    for task_id in emulator.task_ids():
        emulator.assign(task_id, None)
    query = (
        "mutation($orgId: UUID!, $projectId: UUID!) { assignLabelingTasks(orgId: $orgId,"
        ' projectId: $projectId, stageName: "Label", count: 2) { taskId state'
        " assignedTo { userId loggedInUser } datapoint { name } } }"
    )
    tasks = emulator.graphql(query, _ids(emulator))["data"]["assignLabelingTasks"]
    assert len(tasks) == 2
    assert all(
        t["assignedTo"] == {"userId": emulator.key_user_id, "loggedInUser": True} for t in tasks
    )
    assert (
        len(
            emulator.graphql(LIST, _ids(emulator, manualLabelingFilters={"userId": None}))["data"][
                "genericTasks"
            ]["entries"]
        )
        == 1
    )


def test_auto_assign_returns_the_task_to_its_last_reviewer(emulator: EmulatorHandle) -> None:
    """With stageConfig.autoAssign a resubmitted task goes straight back to its reviewer."""
    emulator.set_stage_config("Review_1", autoAssign=True)
    task_id = emulator.task_ids("Label")[0]
    _put(emulator, task_id, finished=True)
    assert emulator.task(task_id).assigned_to is None  # nobody reviewed it here yet
    reviewer = emulator.as_user(emulator.human_email)
    reviewer.claim(task_id)
    reviewer.review(task_id, passed=False)
    _put(emulator, task_id, finished=True)
    task = emulator.task(task_id)
    assert (task.stage_name, task.state) == ("Review_1", "ASSIGNED")
    assert task.assigned_to == reviewer.user.user_id
    project = emulator.graphql(
        "query($orgId: UUID!, $projectId: UUID!) { project(orgId: $orgId, projectId: $projectId)"
        " { stages { stageName stageConfig } } }",
        _ids(emulator),
    )
    configs = {
        s["stageName"]: json.loads(s["stageConfig"]) for s in project["data"]["project"]["stages"]
    }
    assert configs["Review_1"]["autoAssign"] is True


def test_completed_filter_lists_what_a_user_submitted(emulator: EmulatorHandle) -> None:
    """recentlyCompleted lists tasks the user finished in that stage, wherever they are now."""
    done, _, _ = emulator.task_ids("Label")
    _put(emulator, done, finished=True)
    key = emulator.key_user_id
    filters = {"recentlyCompleted": True, "userId": key, "completedAtFrom": "2000-01-01T00:00:00Z"}
    assert _listed(emulator, stageName="Label", manualLabelingFilters=filters) == ["phantom-000"]
    late = {**filters, "completedAtFrom": "2999-01-01T00:00:00Z"}
    assert _listed(emulator, stageName="Label", manualLabelingFilters=late) == []
    human = {"recentlyCompleted": True, "userId": emulator.human_email}
    assert _listed(emulator, stageName="Label", manualLabelingFilters=human) == []

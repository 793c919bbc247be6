"""The emulator over real sockets: transport, auth, errors, storage signatures, admin routes."""

from __future__ import annotations

import gzip
import json
from typing import Any

import requests
import wire

from autolabel.emulator import EmulatorHandle

ME = "query currentUserSDK { me { userId } }"


def test_gzip_base64_and_plain_json_bodies_both_work(emulator: EmulatorHandle) -> None:
    """The SDK's gzip+base64 body and a plain JSON body give the same JSON answer."""
    for gzipped in (True, False):
        answer = wire.graphql(emulator, ME, gzipped=gzipped)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"data": {"me": {"userId": emulator.key_user_id}}}


def test_unknown_or_missing_key_is_a_fast_500(emulator: EmulatorHandle) -> None:
    """A key the emulator never issued, or no key at all, gets HTTP 500, as RedBrick answers
    a bad key (the SDK reads a fast 5xx as an invalid key)."""
    assert wire.graphql(emulator, ME, key="x" * 43).status_code == 500
    bare = requests.post(f"{emulator.url}/graphql/", json={"query": ME}, timeout=10)
    assert bare.status_code == 500


def test_resolver_error_has_errors_and_null_field(emulator: EmulatorHandle) -> None:
    """A refused call answers 200 with errors and data.<field> = null; success has no errors key."""
    query = (
        "query taskSDK($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {"
        " task(orgId: $orgId, projectId: $projectId, taskId: $taskId) { taskId } }"
    )
    missing = "00000000-0000-4000-8000-000000000000"
    ids = {"orgId": emulator.org_id, "projectId": emulator.project_id}
    answer = wire.graphql(emulator, query, {**ids, "taskId": missing}).json()
    assert answer["data"] == {"task": None}
    assert missing in answer["errors"][0]["message"]
    task_id = emulator.task_ids()[0]
    ok = wire.graphql(emulator, query, {**ids, "taskId": task_id}).json()
    assert ok == {"data": {"task": {"taskId": task_id}}}


def test_invalid_documents_are_400(emulator: EmulatorHandle) -> None:
    """Syntax errors and fields the schema lacks are refused before any resolver runs."""
    assert wire.graphql(emulator, "query { me { userId ").status_code == 400
    answer = wire.graphql(emulator, "query { me { password } }")
    assert answer.status_code == 400
    assert "password" in answer.json()["errors"][0]["message"]


def _presign_upload(emulator: EmulatorHandle, name: str) -> dict[str, Any]:
    query = (
        "query($orgId: UUID!, $projectId: UUID!, $files: [String!]!) {"
        " presignSeg: presignUploads(orgId: $orgId, projectId: $projectId, files: $files,"
        ' fileType: "application/octet-stream") { presignedUrl filePath fileName } }'
    )
    variables = {"orgId": emulator.org_id, "projectId": emulator.project_id, "files": [name]}
    answer = wire.graphql(emulator, query, variables).json()
    (entry,) = answer["data"]["presignSeg"]
    return dict(entry)


def _presign_get(emulator: EmulatorHandle, key: str) -> str | None:
    query = (
        "query($orgId: UUID!, $storageId: UUID!, $items: [String]!) {"
        " presignItems(orgId: $orgId, storageId: $storageId, items: $items) }"
    )
    variables = {
        "orgId": emulator.org_id,
        "storageId": "22222222-2222-2222-2222-222222222222",
        "items": [key],
    }
    (url,) = wire.graphql(emulator, query, variables).json()["data"]["presignItems"]
    return url  # type: ignore[no-any-return]


def test_presigned_put_then_get_round_trips(emulator: EmulatorHandle) -> None:
    """Bytes PUT to a presigned URL come back from presignItems' GET URL, gzip replayed."""
    upload = _presign_upload(emulator, "labels/a/b/data.json")
    assert upload["filePath"].endswith("labels/a/b/data.json")
    body = gzip.compress(b'[{"category": "Liver"}]')
    put = requests.put(
        upload["presignedUrl"],
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert put.status_code in (200, 201)
    url = _presign_get(emulator, upload["filePath"])
    assert url is not None and "localhost" in url
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.json() == [{"category": "Liver"}]
    assert _presign_get(emulator, "no/such/object") is None


def test_presigned_urls_are_really_checked(emulator: EmulatorHandle) -> None:
    """Tampered signatures, another method, another key and expired URLs get 403."""
    upload = _presign_upload(emulator, "labels/x/y/0.nii.gz")
    url = upload["presignedUrl"]
    tampered = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    assert requests.put(tampered, data=b"x", timeout=10).status_code == 403
    assert requests.get(url, timeout=10).status_code == 403  # a PUT URL does not allow GET
    other = url.replace("0.nii.gz", "1.nii.gz")
    assert requests.put(other, data=b"x", timeout=10).status_code == 403
    emulator.set_presign_ttl(-1)
    expired = _presign_upload(emulator, "labels/x/y/2.nii.gz")["presignedUrl"]
    answer = requests.put(expired, data=b"x", timeout=10)
    assert answer.status_code == 403 and "expired" in answer.text
    assert requests.put(url, data=b"ok", timeout=10).status_code == 200  # still valid


def _admin(emulator: EmulatorHandle, method: str, route: str, payload: Any = None) -> Any:
    status, answer = emulator.admin(method, route, payload)
    assert status == 200, answer
    return answer


def test_admin_routes_drive_the_emulator(emulator: EmulatorHandle) -> None:
    """Another process can add users, assign, act as a person and read tasks and events."""
    assert _admin(emulator, "GET", "health")["ok"] is True
    person = _admin(emulator, "POST", "users", {"name": "Rex", "email": "rex@example.com"})
    assert len(person["api_key"]) == 43
    task_id = emulator.task_ids()[0]
    state = _admin(emulator, "POST", f"tasks/{task_id}/assign", {"user": "rex@example.com"})
    assert state["assigned_to"] == person["user_id"]
    draft = (
        "mutation($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {"
        " putManualLabelingTaskAndLabels(orgId: $orgId, projectId: $projectId,"
        ' stageName: "Label", taskId: $taskId, elapsedTimeMs: 0, finished: false,'
        ' labelsData: "[]") { ok } }'
    )
    variables = {"orgId": emulator.org_id, "projectId": emulator.project_id, "taskId": task_id}
    acted = _admin(
        emulator, "POST", "act", {"user": "rex@example.com", "query": draft, "variables": variables}
    )
    assert acted == {"data": {"putManualLabelingTaskAndLabels": {"ok": True}}}
    assert _admin(emulator, "GET", f"tasks/{task_id}")["state"] == "STAGED"
    tasks = _admin(emulator, "GET", "tasks")["tasks"]
    assert [t["task_id"] for t in tasks] == emulator.task_ids()
    events = _admin(emulator, "GET", f"events?task_id={task_id}")["events"]
    assert [(e["operation"], e["user_id"], e["accepted"]) for e in events][-1] == (
        "putManualLabelingTaskAndLabels",
        person["user_id"],
        True,
    )
    assert emulator.admin("GET", "tasks/nope")[0] == 404


def test_api_keys_are_not_stored_in_clear(emulator: EmulatorHandle) -> None:
    """The database holds key digests only; the key appears in connection.json alone."""
    database = (emulator.data_dir / "emulator.sqlite3").read_bytes()
    wal = emulator.data_dir / "emulator.sqlite3-wal"
    blob = database + (wal.read_bytes() if wal.exists() else b"")
    assert emulator.api_key.encode() not in blob
    connection = json.loads((emulator.data_dir / "connection.json").read_text())
    assert connection == {
        "url": emulator.url,
        "org_id": emulator.org_id,
        "project_id": emulator.project_id,
        "api_key": emulator.api_key,
        "admin_token": emulator.admin_token,
    }
    assert len(emulator.admin_token) >= 32 and emulator.admin_token != emulator.api_key
    assert (emulator.data_dir / "connection.json").stat().st_mode & 0o077 == 0  # owner only

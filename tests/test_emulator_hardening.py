"""The emulator as a server left running on a workstation: what careless or hostile requests get.

Each test reproduces one case of the adversarial pass (issue 12) over real sockets:
presigns across orgs, hostile bodies and lengths, bad upload keys, admin calls from a web
page, and uploads over stored files.
"""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import wire

from autolabel.emulator import EmulatorHandle
from autolabel.emulator.bodies import GRAPHQL_LIMIT
from autolabel.emulator.datapoints import new_task
from autolabel.emulator.entities import ProjectRecord, utc_now
from autolabel.emulator.seed import ct_taxonomy, default_stages

ME = "query currentUserSDK { me { userId } }"
_doc = wire.sdk_document


@dataclass(frozen=True)
class OtherOrg:
    """A second org on the same emulator, with its own project, key and one stored item."""

    org_id: str
    project_id: str
    api_key: str
    user_id: str
    item_key: str
    task_id: str


def _other_org(emulator: EmulatorHandle) -> OtherOrg:
    """Org B: what a second customer of the same server would have."""
    store = emulator.emulator.store
    org_id, project_id = str(uuid.uuid4()), str(uuid.uuid4())
    store.add_org(org_id, "Other Org")
    user = emulator.emulator.mint_user("Mallory", org_id=org_id, role="ADMIN")
    assert user.api_key is not None
    now = utc_now()
    project = ProjectRecord(
        project_id, org_id, "theirs", "DICOM_SEGMENTATION", ct_taxonomy(), default_stages(), now,
        now,
    )  # fmt: skip
    store.add_project(project)
    item_key = f"{org_id}/{project_id}/items/{uuid.uuid4()}/own.nii.gz"
    emulator.emulator.blobs.write(item_key, b"org B's image", content_type=None, encoding=None)
    task = new_task(
        store, project, name="theirs-1", items=[item_key],
        series_info=[{"name": None, "itemsIndices": [0]}], created_by=user.user_id,
        pre_assign={"Label": user.user_id},
    )  # fmt: skip
    return OtherOrg(org_id, project_id, user.api_key, user.user_id, item_key, task.task_id)


def _presign_items(emulator: EmulatorHandle, key: str, org_id: str, items: list[str]) -> Any:
    return wire.presign_items(emulator, items, key=key, org_id=org_id)


def _presign_upload(
    emulator: EmulatorHandle,
    name: str,
    *,
    key: str | None = None,
    ids: tuple[str, str] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = wire.presign_uploads(emulator, [name], key=key, ids=ids)
    return answer


def _upload_entry(emulator: EmulatorHandle, name: str) -> dict[str, Any]:
    answer = _presign_upload(emulator, name)
    assert "errors" not in answer, answer
    (entry,) = answer["data"]["presignSeg"]
    return dict(entry)


# -- ownership on every presign -----------------------------------------------------------


def test_a_key_of_another_org_cannot_presign_or_download_its_files(
    emulator: EmulatorHandle,
) -> None:
    """Org B's key gets null for org A's DICOM (as for a missing file); each org gets its own."""
    theirs = _other_org(emulator)
    dicom = emulator.task(emulator.task_ids()[0]).items[0]
    stolen = _presign_items(emulator, theirs.api_key, theirs.org_id, [dicom])
    assert stolen == {"data": {"presignItems": [None]}}
    as_org_a = _presign_items(emulator, theirs.api_key, emulator.org_id, [dicom])
    assert as_org_a["data"] == {"presignItems": None} and as_org_a["errors"]
    (own,) = _presign_items(emulator, theirs.api_key, theirs.org_id, [theirs.item_key])["data"][
        "presignItems"
    ]
    assert requests.get(own, timeout=10).content == b"org B's image"
    (url,) = _presign_items(emulator, emulator.api_key, emulator.org_id, [dicom])["data"][
        "presignItems"
    ]
    assert requests.get(url, timeout=10).content[128:132] == b"DICM"
    assert _presign_items(emulator, emulator.api_key, emulator.org_id, [theirs.item_key]) == {
        "data": {"presignItems": [None]}
    }


def test_another_orgs_files_cannot_be_made_items_or_labels(emulator: EmulatorHandle) -> None:
    """createDatapoint and putTaskAndLabels refuse paths of another org's storage."""
    theirs = _other_org(emulator)
    dicom = emulator.task(emulator.task_ids()[0]).items[0]
    label = f"{emulator.org_id}/{emulator.project_id}/labels/{uuid.uuid4()}/0.nii.gz"
    emulator.emulator.blobs.write(label, b"org A's label", content_type=None, encoding=None)
    created = wire.graphql(
        emulator,
        _doc("createDatapointSDK"),
        {
            "orgId": theirs.org_id, "projectId": theirs.project_id, "items": [dicom],
            "name": "stolen", "storageId": wire.REDBRICK_STORAGE, "isGroundTruth": False,
        },
        key=theirs.api_key,
    ).json()  # fmt: skip
    assert created["data"] == {"createDatapoint": None}
    assert "items not uploaded" in created["errors"][0]["message"]
    assert emulator.emulator.store.task_by_name(theirs.project_id, "stolen") is None
    put = wire.graphql(
        emulator,
        _doc("putTaskAndLabelsSDK"),
        {
            "orgId": theirs.org_id, "projectId": theirs.project_id, "stageName": "Label",
            "taskId": theirs.task_id, "elapsedTimeMs": 0, "finished": False, "labelsData": "[]",
            "labelsMap": [{"labelName": label, "seriesIndex": 0}],
        },
        key=theirs.api_key,
    ).json()  # fmt: skip
    assert put["data"] == {"putManualLabelingTaskAndLabels": None} and put["errors"]
    assert emulator.latest_labels(theirs.task_id) is None


def test_a_key_cannot_presign_uploads_into_another_orgs_project(emulator: EmulatorHandle) -> None:
    """presignUploads checks that the project is the caller's, whatever orgId it names."""
    theirs = _other_org(emulator)
    name = f"labels/{uuid.uuid4()}/{uuid.uuid4()}/0.nii.gz"
    for ids in ((emulator.org_id, emulator.project_id), (theirs.org_id, emulator.project_id)):
        answer = _presign_upload(emulator, name, key=theirs.api_key, ids=ids)
        assert answer["data"] is None or answer["data"]["presignSeg"] is None, answer
        assert answer["errors"]
    mine = _presign_upload(
        emulator, name, key=theirs.api_key, ids=(theirs.org_id, theirs.project_id)
    )
    assert mine["data"]["presignSeg"][0]["filePath"].startswith(f"{theirs.org_id}/")


# -- bodies: limits before parsing ----------------------------------------------------------


def _post_with_length(emulator: EmulatorHandle, lengths: list[str], body: bytes) -> wire.Answer:
    headers = [("ApiKey", emulator.api_key), ("Content-Type", "application/json")]
    headers += [("Content-Length", value) for value in lengths]
    return wire.raw(emulator, "POST", "/graphql/", headers, body)


@pytest.mark.parametrize(
    ("lengths", "status"),
    [
        (["abc"], 400),
        (["-1"], 400),
        (["1e3"], 400),
        (["0x10"], 400),
        (["16", "17"], 400),
        ([str(10**15)], 413),
        ([str(GRAPHQL_LIMIT + 1)], 413),
        ([], 411),
    ],
)
def test_a_bad_content_length_gets_a_4xx_and_the_server_goes_on(
    emulator: EmulatorHandle, lengths: list[str], status: int
) -> None:
    """Non-numbers, negatives, duplicates, huge and absent lengths: one 4xx, no hang, no drop."""
    body = json.dumps({"query": ME}).encode()
    answer = _post_with_length(emulator, lengths, body)
    assert answer.status == status, answer
    assert "Content-Length" in answer.json()["errors"][0]["message"] or status == 413
    assert wire.graphql(emulator, ME).status_code == 200


def test_chunked_and_short_bodies_get_a_4xx(emulator: EmulatorHandle) -> None:
    """Transfer-Encoding is refused (411); a body shorter than declared gets 400, not a hang."""
    headers = [("ApiKey", emulator.api_key), ("Transfer-Encoding", "chunked")]
    chunked = wire.raw(emulator, "POST", "/graphql/", headers, b"5\r\nhello\r\n0\r\n\r\n")
    assert chunked.status == 411
    short = _post_with_length(emulator, ["500"], b'{"query": "{ me { userId } }"}')
    assert short.status == 400 and "shorter" in short.json()["errors"][0]["message"]
    upload = _upload_entry(emulator, f"labels/{uuid.uuid4()}/a/0.nii.gz")
    target = upload["presignedUrl"].split("localhost", 1)[1].split("/", 1)[1]
    huge = wire.raw(emulator, "PUT", f"/{target}", [("Content-Length", str(10**12))], b"x" * 10)
    assert huge.status == 413
    assert not emulator.emulator.blobs.exists(upload["filePath"])


def _gzip_bomb(decoded_size: int) -> bytes:
    """base64(gzip(JSON)) whose JSON is ``decoded_size`` bytes, mostly spaces (gzip members
    of 1 MiB of spaces, repeated: what a hostile client needs no time to build)."""
    spaces = gzip.compress(b" " * (1 << 20), compresslevel=9)
    head = gzip.compress(b'{"query": "{ me { userId } }", "pad": "')
    members = [head, *([spaces] * (decoded_size >> 20)), gzip.compress(b'"}')]
    return base64.b64encode(b"".join(members))


def _peak_traced(call: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_is_refused_without_being_inflated(emulator: EmulatorHandle) -> None:
    """256 MiB of JSON in 350 kB of gzip: 413 with memory bounded by the decoded limit; an
    unknown key gets RedBrick's fast 500 before any of the body is decoded."""
    bomb = _gzip_bomb(256 << 20)
    assert len(bomb) < 1 << 20
    headers = [("Content-Encoding-RB", "gzip"), ("Content-Length", str(len(bomb)))]
    answer, peak = _peak_traced(
        lambda: wire.raw(
            emulator, "POST", "/graphql/", [("ApiKey", emulator.api_key), *headers], bomb
        )
    )
    assert answer.status == 413 and "decoded body" in answer.json()["errors"][0]["message"]
    assert peak < 2 * GRAPHQL_LIMIT < 256 << 20  # measured: the limit plus 3 MiB
    stranger, peak = _peak_traced(
        lambda: wire.raw(emulator, "POST", "/graphql/", [("ApiKey", "x" * 43), *headers], bomb)
    )
    assert stranger.status == 500
    assert peak < 4 << 20  # read in chunks and dropped, never decoded
    assert wire.graphql(emulator, ME).status_code == 200


def test_bodies_that_do_not_decode_get_400(emulator: EmulatorHandle) -> None:
    """Bad base64, bad gzip, truncated gzip, not JSON, too deep, not an object: 400 each."""
    good = gzip.compress(json.dumps({"query": ME}).encode())
    bodies = [
        (b"!!!!", True),
        (base64.b64encode(b"not gzip at all"), True),
        (base64.b64encode(good[: len(good) // 2]), True),
        (base64.b64encode(good[:-8] + b"\x00" * 8), True),
        (b"\xff\xfe{not json", False),
        (b"[" * 100_000, False),
        (b'["query"]', False),
        (json.dumps({"query": "{" * 5000}).encode(), False),
    ]
    for body, gzipped in bodies:
        headers = [("ApiKey", emulator.api_key), ("Content-Length", str(len(body)))]
        if gzipped:
            headers.append(("Content-Encoding-RB", "gzip"))
        answer = wire.raw(emulator, "POST", "/graphql/", headers, body)
        assert answer.status == 400, (body[:40], answer)
    assert wire.graphql(emulator, ME).status_code == 200


# -- upload keys ------------------------------------------------------------------------------


def test_bad_upload_keys_get_a_clear_refusal(emulator: EmulatorHandle) -> None:
    """A NUL byte, a 300-character name, a 1100-byte key, or ``..``: a GraphQL error naming
    the file at presign time, and 400 (never a dropped connection) on a signed URL."""
    for name in (
        "labels/a\x00b/0.nii.gz",
        f"labels/{'x' * 300}/0.nii.gz",
        "labels/" + "/".join(["y" * 200] * 6),
        "labels/../items/x.dcm",
    ):
        answer = _presign_upload(emulator, name)
        assert answer["data"] is None or answer["data"]["presignSeg"] is None, answer
        assert "cannot be uploaded" in answer["errors"][0]["message"]
    prefix = f"{emulator.org_id}/{emulator.project_id}/labels"
    for key in (f"{prefix}/a\x00b.nii.gz", f"{prefix}/{'x' * 300}.nii.gz"):
        for method in ("PUT", "GET"):
            url = emulator.emulator.blobs.presign(emulator.url, key, method)
            answer = requests.request(
                method, url, data=b"x" if method == "PUT" else None, timeout=10
            )
            assert answer.status_code == 400 and "invalid storage key" in answer.json()["error"]
    assert wire.graphql(emulator, ME).status_code == 200


# -- uploads never overwrite --------------------------------------------------------------------


def test_uploads_cannot_overwrite_items_or_label_files(emulator: EmulatorHandle) -> None:
    """presignUploads names land in the project's labels/ space, on new keys only; a PUT
    never replaces stored bytes with others (a retried PUT of the same bytes is fine)."""
    item = emulator.task(emulator.task_ids()[0]).items[0]
    before = emulator.read_file(item)
    relative = item.split("/", 2)[2]  # items/<uuid>/<file>, as a key would name it
    upload = _upload_entry(emulator, relative)
    assert upload["filePath"] != item and upload["filePath"].split("/")[2] == "labels"
    assert requests.put(upload["presignedUrl"], data=b"evil", timeout=10).status_code == 200
    assert emulator.read_file(item) == before
    again = _presign_upload(emulator, relative)
    assert "already exists" in again["errors"][0]["message"]
    replaced = requests.put(upload["presignedUrl"], data=b"other", timeout=10)
    assert replaced.status_code == 409 and emulator.read_file(upload["filePath"]) == b"evil"
    assert requests.put(upload["presignedUrl"], data=b"evil", timeout=10).status_code == 200
    old_style = emulator.emulator.blobs.presign(emulator.url, item, "PUT")  # a URL onto the item
    assert requests.put(old_style, data=b"evil", timeout=10).status_code == 409
    assert emulator.read_file(item) == before


# -- admin routes --------------------------------------------------------------------------------


def _users(emulator: EmulatorHandle) -> int:
    return len(emulator.emulator.store.users(emulator.org_id))


def _admin_raw(
    emulator: EmulatorHandle,
    method: str,
    route: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    host: str | None = None,
) -> wire.Answer:
    return wire.raw(
        emulator,
        method,
        f"/_emulator/{route}",
        [*headers, ("Content-Length", str(len(body)))],
        body,
        host=host,
    )


def test_admin_routes_refuse_calls_without_the_token(emulator: EmulatorHandle) -> None:
    """No token, a wrong one, the API key or another scheme: 401, and no user is minted."""
    users = _users(emulator)
    body = json.dumps({"name": "Eve"}).encode()
    for auth in (
        [],
        ["Bearer wrong"],
        [f"Bearer {emulator.api_key}"],
        [f"Basic {emulator.admin_token}"],
    ):
        headers = [("Content-Type", "application/json"), *(("Authorization", a) for a in auth)]
        assert _admin_raw(emulator, "POST", "users", headers, body).status == 401
        assert _admin_raw(emulator, "GET", "tasks", headers).status == 401
    assert _users(emulator) == users
    status, minted = emulator.admin("POST", "users", {"name": "Ann"})
    assert status == 200 and len(minted["api_key"]) == 43 and _users(emulator) == users + 1


def test_admin_routes_refuse_cross_site_requests(emulator: EmulatorHandle) -> None:
    """Even with the token: a foreign Host (DNS rebinding), a foreign Origin, a cross-site
    fetch or a non-JSON body (a form post) is refused before anything is done."""
    port = wire.port_of(emulator)
    token = [("Authorization", f"Bearer {emulator.admin_token}")]
    body = json.dumps([{"target": "me", "kind": "status", "status": 500, "times": None}]).encode()
    as_json = [*token, ("Content-Type", "application/json")]
    refused = [
        (as_json, f"attacker.example:{port}", 403),
        (as_json, f"localhost:{port + 1}", 403),
        (as_json, "localhost", 403),
        ([*as_json, ("Origin", "http://attacker.example")], None, 403),
        ([*as_json, ("Origin", "null")], None, 403),
        ([*as_json, ("Origin", f"https://localhost:{port}")], None, 403),
        ([*as_json, ("Sec-Fetch-Site", "cross-site")], None, 403),
        ([*as_json, ("Host", f"localhost:{port}")], None, 403),  # a second Host header
        ([*token, ("Content-Type", "text/plain")], None, 415),
        (token, None, 415),
    ]
    for headers, host, status in refused:
        answer = _admin_raw(emulator, "POST", "faults", headers, body, host=host)
        assert answer.status == status, (headers, host, answer)
    assert emulator.faults() == []
    assert wire.graphql(emulator, ME).status_code == 200
    allowed = [*as_json, ("Origin", f"http://127.0.0.1:{port}"), ("Sec-Fetch-Site", "same-origin")]
    clean = json.dumps({"target": "me", "kind": "status", "status": 503}).encode()
    ok = _admin_raw(emulator, "POST", "faults", allowed, clean, host=f"127.0.0.1:{port}")
    assert ok.status == 200 and emulator.faults()[0]["status"] == 503

"""A bounded fuzz of the emulator's GraphQL, storage and admin routes over loopback sockets.

:data:`COUNT` requests drawn with a fixed :data:`SEED`: the SDK's own GraphQL documents
(tests/data/graphql-documents.json) mutated in text and variables, sent gzip+base64, plain
or wrongly wrapped; bodies that are noise; broken lengths and headers; presigned storage
URLs with bad signatures, expiries, keys and methods; admin calls missing the token or
coming cross-site; stray routes and methods. Every request must get an answer within
:data:`TIMEOUT_S`, never a 5xx, and a refused request (4xx, or GraphQL errors with no data)
must leave the emulator's state (its database, minus the log of refused writes, its stored
files and its fault rules) as it was.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import sqlite3
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
import requests
import wire

from autolabel.emulator import EmulatorHandle

SEED = 20261201
COUNT = 400
TIMEOUT_S = 10.0

Request = tuple[str, str, list[tuple[str, str]], bytes]

SNIPPETS = (
    "{", "}", "(", ")", "[", "]", "$", "!", ":", "...", "@skip(if: true)", "@include(if: $x)",
    "__typename", "__schema { types { name } }", "fragment F on Query { me { userId } }",
    '"\\u0000"', "query", "mutation", "subscription", "a: me { userId }", "{" * 300, "\x00",
    "# comment\n", '"""block"""', "$orgId", "orgId: $orgId", "1e999", "-0", "null",
)  # fmt: skip
HOSTILE = (
    None, 0, -1, 2**63, 1e308, "", "x" * 5000, "\x00", "../../etc/passwd", "labels/../items/a",
    str(uuid.UUID(int=0)), "not-a-uuid", [], {}, [None], {"a": {"b": [1]}}, True, "API:x",
    "\ud800", "%00", "/" * 50, "labels/" + "y" * 300,
)  # fmt: skip


@dataclass
class Pools:
    """What the fuzz draws from: the emulator's ids and presigned URLs made before it starts."""

    ids: dict[str, Any]
    get_urls: list[tuple[str, str]]  # (method, URL)
    put_urls: list[tuple[str, str]]
    expired_urls: list[tuple[str, str]]
    documents: list[str]
    port: int
    key: str
    token: str


@dataclass
class Figures:
    """Counts kept while fuzzing."""

    sent: int = 0
    accepted: int = 0
    unanswered: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_family: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


# -- the emulator's state -------------------------------------------------------------------


def _state(emulator: EmulatorHandle) -> tuple[Any, ...]:
    """Database rows (refused-write log excepted), stored files and fault rules."""
    path = emulator.data_dir / "emulator.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name != 'sqlite_sequence' ORDER BY name"
            )
        ]
        rows = {
            table: sorted(map(repr, db.execute(f"SELECT * FROM {table}" + _accepted_only(table))))
            for table in tables
        }
    finally:
        db.close()
    files = []
    for folder, _, names in os.walk(emulator.data_dir / "storage"):
        for name in names:
            info = os.stat(os.path.join(folder, name))
            files.append((folder, name, info.st_size, info.st_mtime_ns))
    return rows, sorted(files), emulator.faults()


def _accepted_only(table: str) -> str:
    # A refused write is logged as an event (accepted = 0): the log, not the state.
    return " WHERE accepted = 1" if table == "events" else ""


# -- pools ------------------------------------------------------------------------------------


def _presign_items(emulator: EmulatorHandle, items: list[str]) -> list[str]:
    return [str(u) for u in wire.presign_items(emulator, items)["data"]["presignItems"]]


def _presign_uploads(emulator: EmulatorHandle, count: int) -> list[str]:
    names = [f"labels/{uuid.uuid4()}/{uuid.uuid4()}/0.nii.gz" for _ in range(count)]
    entries = wire.presign_uploads(emulator, names)["data"]["presignSeg"]
    return [str(e["presignedUrl"]) for e in entries]


def _pools(emulator: EmulatorHandle) -> Pools:
    tasks = emulator.tasks()
    items = [item for task in tasks for item in task.items[:3]]
    put_urls = _presign_uploads(emulator, 12)
    for url in put_urls[:4]:  # already used: a later PUT of other bytes must be refused
        assert requests.put(url, data=b"first upload", timeout=10).status_code == 200
    emulator.set_presign_ttl(-10)
    expired = [("GET", u) for u in _presign_items(emulator, items[:2])]
    expired += [("PUT", u) for u in _presign_uploads(emulator, 2)]
    emulator.set_presign_ttl(3600)
    task_id = tasks[0].task_id
    original = [
        {"taskId": task_id, "name": "test", "series": [
            {"segmentations": "seg.nii.gz", "segmentMap": {"1": "Liver"}, "name": "test",
             "items": "https://test"}]}
    ]  # fmt: skip
    ids: dict[str, Any] = {
        "orgId": emulator.org_id, "projectId": emulator.project_id, "taskId": task_id,
        "taskIds": [t.task_id for t in tasks], "stageName": "Label", "first": 5,
        "after": None, "cacheTime": None, "items": items[:2],
        "storageId": wire.REDBRICK_STORAGE, "files": ["new.nii.gz"],
        "fileType": ["application/octet-stream"], "filesData": [],
        "fileTypeData": "application/json", "fileEncodingData": "gzip",
        "filesSeg": ["labels/a/b/0.nii.gz"], "fileTypeSeg": "application/octet-stream",
        "fileEncodingSeg": None, "original": json.dumps(original), "convert": True,
        "elapsedTimeMs": 0, "finished": False, "labelsData": "[]", "labelsDataPath": None,
        "labelsMap": None, "reviewVal": True, "emails": [emulator.key_user_id],
        "currentUser": False, "refresh": True, "name": "fuzz", "isGroundTruth": False,
        "count": 1, "taxId": None, "seriesInfo": None, "metaData": None,
    }  # fmt: skip
    documents = [v for versions in wire.DOCUMENTS.values() for v in versions.values()]
    return Pools(
        ids=ids,
        get_urls=[("GET", u) for u in _presign_items(emulator, items)],
        put_urls=[("PUT", u) for u in put_urls],
        expired_urls=expired,
        documents=documents,
        port=wire.port_of(emulator),
        key=emulator.api_key,
        token=emulator.admin_token,
    )


# -- generators ------------------------------------------------------------------------------


def _mutate_text(rng: random.Random, text: str) -> str:
    """Half the documents stay as the SDK sends them; the others get 1 to 3 edits."""
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randint(1, 40))
        op = rng.randrange(6)
        if op == 0:
            text = text[:i] + text[j:]
        elif op == 1:
            text = text[:i] + text[i:j] * rng.randint(2, 5) + text[j:]
        elif op == 2:
            text = text[:i] + rng.choice(SNIPPETS) + text[i:]
        elif op == 3:
            text = text[:i]
        elif op == 4:
            words = [w for w in text.replace("(", " ").replace(")", " ").split() if w.isalnum()]
            if words:
                text = text.replace(rng.choice(words), rng.choice(words), 1)
        else:
            text = text.replace("presigned: false", "presigned: true")
    return text


def _mutate_variables(rng: random.Random, variables: dict[str, Any]) -> Any:
    out = dict(variables)
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(sorted(out))
        choice = rng.randrange(4)
        if choice == 0:
            out.pop(name)
        elif choice == 1:
            out[name] = rng.choice(HOSTILE)
        elif choice == 2:
            out[name] = [out[name]] * rng.randint(0, 3)
        else:
            out[f"extra{rng.randrange(9)}"] = rng.choice(HOSTILE)
        if not out:
            break
    return out if rng.random() > 0.03 else rng.choice([[], "vars", 7, None])


def _wrap(rng: random.Random, payload: Any) -> tuple[bytes, list[tuple[str, str]]]:
    """A GraphQL body: gzip+base64 (the SDK), plain JSON, or wrapped wrongly."""
    text = json.dumps(payload).encode()
    style = rng.random()
    gzip_header = [("Content-Encoding-RB", "gzip")]
    if style < 0.6:
        return base64.b64encode(gzip.compress(text)), gzip_header
    if style < 0.85:
        return text, []
    broken = rng.choice(
        [
            (gzip.compress(text), gzip_header),  # not base64
            (base64.b64encode(text), gzip_header),  # not gzip
            (base64.b64encode(gzip.compress(text)), []),  # gzip without the header
            (base64.b64encode(gzip.compress(text)[:-5]), gzip_header),  # truncated
            (base64.b64encode(gzip.compress(text)) + b"!!", gzip_header),
        ]
    )
    return broken


def _length(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Length", str(len(body)))]


def _key_header(rng: random.Random, pools: Pools) -> list[tuple[str, str]]:
    roll = rng.random()
    if roll < 0.88:
        return [("ApiKey", pools.key)]
    return rng.choice([[], [("ApiKey", "")], [("ApiKey", "x" * 43)], [("ApiKey", "k" * 9000)]])


def _graphql_document(rng: random.Random, pools: Pools) -> Request:
    query = _mutate_text(rng, rng.choice(pools.documents))
    payload: dict[str, Any] = {"query": query, "variables": _mutate_variables(rng, pools.ids)}
    if rng.random() < 0.1:
        payload["operationName"] = rng.choice(HOSTILE)
    body, headers = _wrap(rng, payload)
    return "POST", "/graphql/", [*_key_header(rng, pools), *headers, *_length(body)], body


def _graphql_noise(rng: random.Random, pools: Pools) -> Request:
    me = json.dumps({"query": "{ me { userId } }"}).encode()
    bodies = [
        bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000))),
        b"[" * rng.randint(1, 50_000),
        b'{"query": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"query": 12}',
        b'["query", "{ me { userId } }"]',
        b'{"query": "{ me { userId } }", "variables": ' + b"9" * 5000 + b"}",
        json.dumps({"query": "query {" + " me { userId }" * 3000 + "}"}).encode(),
        json.dumps({"query": "{" * 20_000}).encode(),
        b"\xff\xfe" + me,
        me.replace(b"{ me", b"{ me" * 1),
    ]
    body = rng.choice(bodies)
    headers: list[tuple[str, str]] = []
    if rng.random() < 0.4:
        body = base64.b64encode(gzip.compress(body))
        headers.append(("Content-Encoding-RB", rng.choice(["gzip", "GZIP", "br", ""])))
    if rng.random() < 0.03:  # a gzip bomb over the decoded limit (a few per run)
        spaces = gzip.compress(b" " * (1 << 20))
        body = base64.b64encode(gzip.compress(b'{"query": "') + spaces * 40)
        headers = [("Content-Encoding-RB", "gzip")]
    return "POST", "/graphql/", [*_key_header(rng, pools), *headers, *_length(body)], body


def _broken_headers(rng: random.Random, pools: Pools) -> Request:
    body = json.dumps({"query": "query currentUserSDK { me { userId } }"}).encode()
    key = [("ApiKey", pools.key)]
    choice = rng.choice(
        [
            [("Content-Length", "abc")],
            [("Content-Length", "-1")],
            [("Content-Length", str(10 ** rng.randint(9, 30)))],
            [("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 1))],
            [],
            [("Content-Length", str(len(body) + rng.randint(1, 500)))],  # body ends early
            [("Content-Length", f" {len(body)}\t")],
            [("Content-Length", "0")],
            [("Transfer-Encoding", "chunked"), ("Content-Length", str(len(body)))],
            [("Content-Length", str(len(body))), ("Expect", "100-continue")],
            [("Content-Length", str(len(body))), ("Content-Encoding-RB", "gzip")],
            [("Content-Length", str(len(body))), ("X-Filler", "f" * 60_000)],
            [("Content-Length", str(len(body))), *[("X-Many", "m")] * 120],
        ]
    )
    return "POST", rng.choice(["/graphql/", "/api/graphql", "/graphql"]), [*key, *choice], body


def _mutate_url(rng: random.Random, method: str, url: str) -> tuple[str, str]:
    """A presigned URL made wrong in one or two ways: its target and the method to use."""
    parts = urlsplit(url)
    path, query = parts.path, dict(parse_qsl(parts.query))
    for _ in range(rng.randint(1, 2)):
        what = rng.randrange(9)
        signature = query.get("signature", "")
        if what == 0 and signature:
            i = rng.randrange(len(signature))
            query["signature"] = (
                signature[:i] + rng.choice("0123456789abcdefX") + signature[i + 1 :]
            )
        elif what == 1:
            query.pop(rng.choice(["signature", "expires"]), None)
        elif what == 2:
            query["expires"] = rng.choice(["abc", "-1", "0", "9" * 5000, "1e10", ""])
        elif what == 3:
            path += rng.choice(["x", "/", "%00", "%ff", "/..", "/" + "z" * 300])
        elif what == 4:
            path = path.replace(
                "/storage/", rng.choice(["/storage/../", "/storage//", "/storage/%2e%2e/"]), 1
            )
        elif what == 5:
            method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"])
        elif what == 6:
            path = path[: rng.randrange(len("/storage/"), len(path) + 1)]
        elif what == 7:
            query["signature"] = query.get("signature", "").upper()
        # what == 8: leave it valid
    return method, path + ("?" + urlencode(query) if query else "")


def _storage(rng: random.Random, pools: Pools) -> Request:
    pool = rng.choice([pools.get_urls, pools.put_urls, pools.expired_urls])
    method, target = _mutate_url(rng, *rng.choice(pool))
    body = b""
    headers: list[tuple[str, str]] = []
    if method in ("PUT", "POST") or rng.random() < 0.1:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4000)))
        headers = [
            ("Content-Type", rng.choice(["application/octet-stream", "text/plain", "\x01"])),
            ("Content-Encoding", rng.choice(["gzip", "identity", "x" * 300])),
        ]
    length = _length(body) if rng.random() > 0.1 else [("Content-Length", rng.choice(["-5", "x"]))]
    return method, target, [*headers, *length], body


_ADMIN_ROUTES = ("health", "faults", "tasks", "events", "users", "act", "tasks/{task}/assign", "x")


def _admin(rng: random.Random, pools: Pools) -> Request:
    route = rng.choice(_ADMIN_ROUTES).format(task=pools.ids["taskId"])
    method = rng.choice(["GET", "POST", "DELETE"])
    payload = rng.choice(
        [
            {"name": "Eve", "api_key": True},
            [{"target": "*", "kind": "status", "status": 500, "times": None}],
            {"user": "labeler@example.com", "query": "{ me { userId } }"},
            {"user": None},
        ]
    )
    body = json.dumps(payload).encode()
    good_auth = ("Authorization", f"Bearer {pools.token}")
    defects: list[tuple[str | None, list[tuple[str, str]]]] = [
        (None, []),
        (None, [("Authorization", "Bearer " + pools.token[:-1] + "A")]),
        (None, [("Authorization", f"Bearer {pools.key}")]),
        (f"rebind.example:{pools.port}", [good_auth]),
        (f"localhost:{pools.port + 1}", [good_auth]),
        (None, [good_auth, ("Origin", rng.choice(["http://evil.example", "null"]))]),
        (None, [good_auth, ("Sec-Fetch-Site", "cross-site")]),
    ]
    if method != "GET":
        defects.append((None, [good_auth, ("Content-Type", "text/plain")]))
    host, headers = rng.choice(defects)
    if host is not None:
        headers = [("Host", host), *headers]
    if method != "GET" and not any(k == "Content-Type" for k, _ in headers):
        headers = [*headers, ("Content-Type", "application/json")]
    body = body if method != "GET" else b""
    headers = [*headers, *_length(body)]
    return method, f"/_emulator/{route}", headers, body


def _stray(rng: random.Random, pools: Pools) -> Request:
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    target = rng.choice(
        [
            "/", "/graphql/", "/storage/", "/storage", "/_emulator", "/%00", "//..//etc/passwd",
            "/graphql/?" + "q" * 3000, "/" + "p" * 70_000, "/_emulator/../graphql/",
            "http://localhost/graphql/", "*",
        ]
    )  # fmt: skip
    body = b"{}" if method in ("POST", "PUT") else b""
    return (
        method,
        quote(target, safe="/%?*:=") if "%" not in target else target,
        _length(body),
        body,
    )


GENERATORS: list[tuple[float, Callable[[random.Random, Pools], Request]]] = [
    (0.34, _graphql_document),
    (0.12, _graphql_noise),
    (0.10, _broken_headers),
    (0.26, _storage),
    (0.12, _admin),
    (0.06, _stray),
]


# -- the run ----------------------------------------------------------------------------------


def _refused(answer: wire.Answer) -> bool:
    """4xx, or a GraphQL answer whose every root field is null with errors."""
    if answer.status >= 400:
        return True
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        body = answer.json()
    except ValueError:
        return False
    if not isinstance(body, dict) or not body.get("errors"):
        return False
    data = body.get("data")
    return not data or all(value is None for value in data.values())


def _send(pools: Pools, request: Request) -> wire.Answer:
    """Write the request (with ``Host: localhost:PORT`` unless it names its own)."""
    method, target, headers, body = request
    if not any(name == "Host" for name, _ in headers):
        headers = [("Host", f"localhost:{pools.port}"), *headers]
    data = wire.request_bytes(method, target, headers, body)
    return wire.exchange(pools.port, data, timeout=TIMEOUT_S, method=method)


def _refused_key(answer: Any) -> bool:
    """The 500 RedBrick sends for an unknown API key (redbrick/common/client.py), as opposed
    to the emulator's own failure, whose 500 names the error."""
    return (
        answer.status == 500
        and b"Internal Server Error" in answer.body
        and (b"emulator error" not in answer.body)
    )


def test_fuzzed_requests_get_answers_never_5xx_and_refusals_change_nothing(
    emulator: EmulatorHandle, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """400 seeded random and mutated requests: each answered in time, none 5xx, and none
    that is refused changes the emulator's state. The figures are printed."""
    pools = _pools(emulator)
    rng = random.Random(SEED)
    weights = [w for w, _ in GENERATORS]
    figures = Figures()
    state = _state(emulator)
    started = time.monotonic()
    for number in range(COUNT):
        generator = rng.choices([g for _, g in GENERATORS], weights)[0]
        request = generator(rng, pools)
        family = generator.__name__.strip("_")
        figures.sent += 1
        figures.by_family[family] += 1
        where = f"#{number} {family} {request[0]} {request[1][:80]!r}"
        try:
            answer = _send(pools, request)
        except (TimeoutError, wire.NoAnswer, OSError) as exc:
            figures.unanswered += 1
            figures.failures.append(f"{where}: no answer ({exc!r})")
            continue
        figures.by_status[answer.status] += 1
        if answer.status >= 500 and not _refused_key(answer):
            figures.failures.append(f"{where}: {answer.status} {answer.body[:200]!r}")
        after = _state(emulator)
        if not _refused(answer):
            figures.accepted += 1
        elif after != state:
            figures.failures.append(f"{where}: refused with {answer.status} but changed state")
        state = after
    elapsed = time.monotonic() - started
    refused = {s: n for s, n in sorted(figures.by_status.items()) if s >= 400}
    # RedBrick answers an unknown key with a fast 500 (the emulator models it); any other 5xx
    # is the emulator failing, and fails the test above.
    fives = sum(n for s, n in figures.by_status.items() if s > 500)
    with capsys.disabled():
        print(
            f"\nemulator fuzz (seed {SEED}): {figures.sent} requests in {elapsed:.1f} s;"
            f" accepted {figures.accepted}; refused by status {refused} (500: unknown key);"
            f" other 5xx {fives};"
            f" unanswered {figures.unanswered}; by kind {dict(figures.by_family)}"
        )
    assert not figures.failures, "\n".join(figures.failures[:20])
    _the_sdk_still_exports_the_images(emulator, tmp_path)


def _the_sdk_still_exports_the_images(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """After the fuzz the official SDK still exports a task and downloads its DICOM."""
    redbrick = pytest.importorskip("redbrick")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        project = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    task_id = emulator.task_ids()[0]
    (exported,) = list(
        project.export.export_tasks(task_id=task_id, with_files=True, destination=str(tmp_path))
    )
    files = [Path(p) for p in exported["series"][0]["items"]]
    assert files and all(p.read_bytes()[128:132] == b"DICM" for p in files)

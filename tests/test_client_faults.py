"""Failures injected in the emulator: which calls the client retries, which it never repeats.

Queries and downloads are idempotent: 5xx, 429 (with Retry-After), dropped connections and
read timeouts are retried with backoff. Mutations and uploads are sent once: a failure is
reported, and the emulator's write log proves nothing was written twice or behind our back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.errors import GraphQLError, PlatformError, TransportError
from autolabel.redbrick import Project, RetryPolicy, get_project
from autolabel.redbrick.types import ITEM_URLS_FRESH_S

FAST = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.05, retry_after_max=2.0)


@pytest.fixture
def project(emulator: EmulatorHandle) -> Iterator[Project]:
    with get_project(
        emulator.org_id,
        emulator.project_id,
        emulator.api_key,
        url=emulator.url,
        retry=FAST,
        timeout=(2.0, 1.0),
    ) as p:
        yield p


def series(tmp_path: Path) -> list[dict[str, object]]:
    data = np.zeros((32, 32, 16), dtype=np.uint8)
    data[4:12, 4:12, 4:8] = 1
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return [{"segmentations": str(path), "segmentMap": {"1": "Liver"}}]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_query_is_retried_through_server_errors(
    project: Project, emulator: EmulatorHandle, status: int
) -> None:
    """A query that meets a 5xx or 429 twice succeeds on the third try."""
    task_id = emulator.task_ids("Label")[0]
    rule = emulator.add_fault("taskSDK", "status", status=status, times=2)
    assert project.get_task(task_id).task_id == task_id
    assert rule.fired == 2


def test_retry_after_is_honoured(project: Project, emulator: EmulatorHandle) -> None:
    """A 429 with Retry-After: 0.6 makes the client wait at least that long before retrying."""
    task_id = emulator.task_ids("Label")[0]
    emulator.add_fault("taskSDK", "status", status=429, retry_after=0.6, times=1)
    started = time.monotonic()
    project.get_task(task_id)
    assert time.monotonic() - started >= 0.6


def test_query_survives_a_dropped_connection_and_a_slow_answer(
    project: Project, emulator: EmulatorHandle
) -> None:
    """A connection closed without an answer, then an answer slower than the read timeout, are retried."""
    drop = emulator.add_fault("tasksListSDK", "drop", times=1)
    slow = emulator.add_fault("tasksListSDK", "delay", delay_s=1.5, times=1)
    assert len(list(project.list_assigned_tasks("Label"))) == 3
    assert (drop.fired, slow.fired) == (1, 1)


def test_query_gives_up_after_the_last_attempt(project: Project, emulator: EmulatorHandle) -> None:
    """A query that keeps failing raises TransportError with the status, after exactly 3 tries."""
    rule = emulator.add_fault("taskSDK", "status", status=503, times=None)
    with pytest.raises(TransportError) as caught:
        project.get_task(emulator.task_ids("Label")[0])
    assert caught.value.status == 503 and caught.value.operation == "taskSDK"
    assert rule.fired == 3


def test_graphql_error_is_raised_not_retried(project: Project, emulator: EmulatorHandle) -> None:
    """A GraphQL error is an answer, not a glitch: raised at once with the server's message."""
    rule = emulator.add_fault(
        "taskSDK", "graphql_error", message="internal resolver failure", times=None
    )
    with pytest.raises(GraphQLError) as caught:
        project.get_task(emulator.task_ids("Label")[0])
    assert any("internal resolver failure" in m for m in caught.value.messages)
    assert rule.fired == 1


@pytest.mark.parametrize("kind", ["status", "drop"])
def test_mutation_is_never_repeated(
    project: Project, emulator: EmulatorHandle, tmp_path: Path, kind: str
) -> None:
    """A save that meets a 503 or a dropped connection is sent once and reported, not retried."""
    task_id = emulator.task_ids("Label")[0]
    rule = emulator.add_fault("putTaskAndLabelsSDK", kind, status=503, times=1)
    with pytest.raises(TransportError):
        project.save_labels(task_id, "Label", series(tmp_path))
    assert rule.fired == 1
    assert emulator.write_count(task_id) == 0
    # The fault is spent: had the client retried, the first call would have succeeded.
    project.save_labels(task_id, "Label", series(tmp_path))
    assert emulator.write_count(task_id) == 1


def test_mutation_failure_in_put_tasks_is_a_failed_task(
    project: Project, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """In put_tasks a mutation's transport failure fails that task only; others are saved."""
    first, second = emulator.task_ids("Label")[:2]
    emulator.add_fault("putTaskAndLabelsSDK", "status", status=502, times=1)
    tasks = [{"taskId": first, "series": series(tmp_path)}]
    failed = project.labeling.put_tasks("Label", tasks, finalize=False)
    assert [f["taskId"] for f in failed] == [first] and "TransportError" in failed[0]["error"]
    assert (
        project.labeling.put_tasks(
            "Label", [{"taskId": second, "series": series(tmp_path)}], finalize=False
        )
        == []
    )
    assert emulator.write_count(first) == 0 and emulator.write_count(second) == 1


def test_download_is_retried_upload_is_not(
    project: Project, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Storage GET survives a 503 and a drop; a failed PUT fails the save without a write."""
    task_id = emulator.task_ids("Label")[0]
    get_503 = emulator.add_fault("storage:GET", "status", status=503, times=1)
    get_drop = emulator.add_fault("storage:GET", "drop", times=1)
    (files,) = project.download_items(project.get_task(task_id), tmp_path / "items", workers=1)
    assert all(p.stat().st_size > 0 for p in files.paths)
    assert (get_503.fired, get_drop.fired) == (1, 1)
    assert not [p for p in (tmp_path / "items").rglob(".*")]  # no temporary leftovers
    put = emulator.add_fault("storage:PUT", "status", status=503, times=1)
    with pytest.raises(TransportError):
        project.save_labels(task_id, "Label", series(tmp_path))
    assert put.fired == 1 and emulator.write_count(task_id) == 0


def test_expired_download_url_is_a_platform_error(
    project: Project, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """An expired presigned URL (403 from storage) is reported, not mistaken for a bad key."""
    emulator.set_presign_ttl(-10)
    with pytest.raises(PlatformError) as caught:
        project.download_items(project.get_task(emulator.task_ids("Label")[0]), tmp_path)
    assert caught.value.status == 403
    assert "AuthError" not in type(caught.value).__name__


def test_a_task_read_long_ago_is_presigned_again(
    project: Project, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """The download uses the item URLs a fresh read came with (taskSDK's itemsPresigned:
    no second presign); a read older than ITEM_URLS_FRESH_S is presigned again, so URLs that
    expired since the read never reach storage."""
    task_id = emulator.task_ids("Label")[0]
    emulator.set_presign_ttl(-10)  # this read's URLs are expired
    stale = project.get_task(task_id)
    emulator.set_presign_ttl(600)
    with pytest.raises(PlatformError) as caught:  # a fresh read: its own URLs are used
        project.download_items(stale, tmp_path / "fresh")
    assert caught.value.status == 403
    old = dataclasses.replace(stale, read_at=time.monotonic() - ITEM_URLS_FRESH_S - 1)
    (files,) = project.download_items(old, tmp_path / "old")
    for item, path in zip(old.items, files.paths, strict=True):
        assert path.read_bytes() == emulator.read_file(item)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://storage.example/x.dcm"])
def test_an_item_url_that_is_not_http_is_refused_unfetched(
    project: Project, emulator: EmulatorHandle, tmp_path: Path, url: str
) -> None:
    """A task read whose item URLs (``itemsPresigned``) are not http(s) -- a broken or
    hostile server -- is refused at once, naming the scheme: no file is written, and it is
    not retried as a network failure ("connection failed", with backoff)."""
    from autolabel.redbrick.types import Task

    raw = project.client.get_task(emulator.org_id, emulator.project_id, emulator.task_ids()[0])
    raw["datapoint"]["itemsPresigned"] = [url for _ in raw["datapoint"]["items"]]
    with pytest.raises(PlatformError) as caught:
        project.download_items(Task.from_wire(raw), tmp_path / "items")
    assert not isinstance(caught.value, TransportError)
    scheme = url.split(":", 1)[0]
    assert f"scheme '{scheme}'" in str(caught.value) and caught.value.operation == "storage GET"
    assert not [p for p in (tmp_path / "items").rglob("*") if p.is_file()]


def test_key_appears_in_no_log_error_or_file(
    project: Project, emulator: EmulatorHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through retries, refusals and failures the key shows up in no log, error or written file."""
    caplog.set_level(logging.DEBUG)
    key = emulator.api_key
    work = tmp_path / "client"  # everything the client writes (the emulator's folder is apart)
    work.mkdir()
    task_id = emulator.task_ids("Label")[0]
    errors: list[BaseException] = []
    emulator.add_fault("taskSDK", "status", status=503, times=1)
    emulator.add_fault("storage:GET", "drop", times=1)
    project.download_items(project.get_task(task_id), work / "out")
    emulator.add_fault("taskSDK", "graphql_error", message=f"echo {key}", times=1)
    emulator.add_fault("putTaskAndLabelsSDK", "status", status=500, times=1)
    emulator.assign(emulator.task_ids("Label")[1], emulator.human_email)
    for call in (
        lambda: project.get_task(task_id),
        lambda: project.save_labels(task_id, "Label", series(work)),
        lambda: project.save_labels(emulator.task_ids("Label")[1], "Label", series(work)),
        lambda: project.labeling.move_tasks_to_start(task_ids=[task_id]),
        lambda: get_project(emulator.org_id, emulator.project_id, key[:-1] + "?", url=emulator.url),
    ):
        with pytest.raises(PlatformError) as caught:
            call()
        errors.append(caught.value)
    failed = project.labeling.put_tasks(
        "Label", [{"taskId": emulator.task_ids("Label")[1], "series": series(work)}]
    )
    assert len(errors) == 5 and failed
    assert "***" in str(errors[0])  # the server echoed the key; we scrubbed it
    for text in [caplog.text, *map(str, errors), *map(repr, errors), str(failed)]:
        assert key not in text
    for path in work.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes()


@pytest.mark.parametrize(
    ("status", "error"), [(401, "AuthError"), (403, "AuthError"), (404, "NotFoundError")]
)
def test_refusals_are_mapped_and_not_retried(
    project: Project, emulator: EmulatorHandle, status: int, error: str
) -> None:
    """401/403 mean the key is refused and 404 a wrong endpoint: raised at once, never retried."""
    rule = emulator.add_fault("taskSDK", "status", status=status, times=None)
    with pytest.raises(PlatformError) as caught:
        project.get_task(emulator.task_ids("Label")[0])
    assert type(caught.value).__name__ == error and caught.value.status == status
    assert rule.fired == 1


def test_invalid_document_is_a_graphql_error(project: Project) -> None:
    """A document the schema rejects (HTTP 400 with errors) raises GraphQLError with the reason."""
    with pytest.raises(GraphQLError) as caught:
        project.client.transport.execute(
            "broken", "query broken { noSuchField }", {}, idempotent=True
        )
    assert caught.value.status == 400
    assert any("noSuchField" in m for m in caught.value.messages)


def test_one_client_serves_many_threads(emulator: EmulatorHandle) -> None:
    """Worker threads share one project: concurrent reads all succeed, through a 503 too.
    (A read timeout long enough for 24 requests at once on a loaded machine: timeouts are
    not what this test is about.)"""
    ids = emulator.task_ids("Label") * 8
    emulator.add_fault("taskSDK", "status", status=503, times=3)
    with (
        get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url,
            retry=FAST, timeout=(2.0, 15.0),
        ) as project,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):  # fmt: skip
        names = list(pool.map(lambda task_id: project.get_task(task_id).name, ids))
    assert sorted(set(names)) == ["phantom-000", "phantom-001", "phantom-002"]
    assert len(names) == len(ids)

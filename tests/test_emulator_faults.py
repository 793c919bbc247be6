"""Injected faults really happen on the wire: statuses, GraphQL errors, delays, drops, rates."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

import pytest
import requests

from autolabel.emulator import EmulatorHandle, FaultRule, load_faults

ME = "query currentUserSDK { me { userId } }"


def _me(emulator: EmulatorHandle, timeout: float = 10) -> requests.Response:
    body = base64.b64encode(gzip.compress(json.dumps({"query": ME, "variables": {}}).encode()))
    headers = {"ApiKey": emulator.api_key, "Content-Encoding-RB": "gzip"}
    return requests.post(f"{emulator.url}/graphql/", data=body, headers=headers, timeout=timeout)


def test_status_fault_with_retry_after_fires_the_next_n_calls(emulator: EmulatorHandle) -> None:
    """A 429 rule for two calls answers 429 with Retry-After twice, then the real answer."""
    emulator.add_fault("currentUserSDK", "status", status=429, retry_after=3, times=2)
    first, second, third = _me(emulator), _me(emulator), _me(emulator)
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["Retry-After"] == "3"
    assert third.json()["data"]["me"]["userId"] == emulator.key_user_id
    assert emulator.faults()[0]["fired"] == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_statuses_by_root_field(emulator: EmulatorHandle, status: int) -> None:
    """A rule may target the root field instead of the operation name."""
    emulator.add_fault("me", "status", status=status)
    assert _me(emulator).status_code == status
    assert _me(emulator).status_code == 200


def test_graphql_error_fault(emulator: EmulatorHandle) -> None:
    """A graphql_error rule answers 200 with errors and data.me = null."""
    emulator.add_fault("me", "graphql_error", message="try later")
    assert _me(emulator).json() == {"errors": [{"message": "try later"}], "data": {"me": None}}


def test_delay_fault_slows_the_answer(emulator: EmulatorHandle) -> None:
    """A delay rule holds the answer back, then answers normally."""
    emulator.add_fault("me", "delay", delay_s=0.6)
    start = time.monotonic()
    assert _me(emulator).status_code == 200
    assert time.monotonic() - start >= 0.6
    with pytest.raises(requests.Timeout):
        emulator.add_fault("me", "delay", delay_s=1.0)
        _me(emulator, timeout=0.3)


def test_drop_fault_closes_the_connection(emulator: EmulatorHandle) -> None:
    """A drop rule closes the socket without an answer; the next call works."""
    emulator.add_fault("currentUserSDK", "drop")
    with pytest.raises(requests.ConnectionError):
        _me(emulator)
    assert _me(emulator).status_code == 200


def test_rate_fault_is_seeded_and_repeatable(emulator: EmulatorHandle) -> None:
    """A rate rule fires on a seeded random subset: the same seed gives the same pattern."""
    patterns = []
    for _ in range(2):
        emulator.clear_faults()
        emulator.add_fault("me", "status", status=503, times=None, rate=0.5, seed=7)
        patterns.append([_me(emulator).status_code for _ in range(20)])
    assert patterns[0] == patterns[1]
    assert 3 <= patterns[0].count(503) <= 17 and set(patterns[0]) == {200, 503}


def test_storage_faults(emulator: EmulatorHandle) -> None:
    """storage:GET faults hit downloads only; a dropped download raises on the client."""
    task_id = emulator.task_ids()[0]
    query = (
        "query($orgId: UUID!, $projectId: UUID!, $taskId: UUID!) {"
        " task(orgId: $orgId, projectId: $projectId, taskId: $taskId) {"
        " datapoint { itemsPresigned: items(presigned: true) } } }"
    )
    variables = {"orgId": emulator.org_id, "projectId": emulator.project_id, "taskId": task_id}
    urls = emulator.graphql(query, variables)["data"]["task"]["datapoint"]["itemsPresigned"]
    emulator.add_fault("storage:GET", "status", status=503)
    emulator.add_fault("storage:GET", "drop")
    assert requests.get(urls[0], timeout=10).status_code == 503
    with pytest.raises(requests.ConnectionError):
        requests.get(urls[0], timeout=10)
    answer = requests.get(urls[0], timeout=10)
    assert answer.status_code == 200 and answer.content[128:132] == b"DICM"
    assert _me(emulator).status_code == 200


def test_faults_over_admin_routes(emulator: EmulatorHandle) -> None:
    """POST/GET/DELETE /_emulator/faults set, show and clear rules from another process."""
    status, added = emulator.admin(
        "POST", "faults", [{"target": "me", "kind": "status", "status": 502}]
    )
    assert status == 200 and added["faults"][0]["status"] == 502
    assert _me(emulator).status_code == 502
    emulator.admin("POST", "faults", {"target": "me", "kind": "status", "times": None})
    assert emulator.admin("DELETE", "faults") == (200, {"faults": []})
    assert _me(emulator).status_code == 200
    status, bad = emulator.admin("POST", "faults", {"target": "me", "kind": "explode"})
    assert status == 400 and "kind" in bad["error"]


def test_fault_specs_load_from_json_and_files(tmp_path: Any) -> None:
    """--faults accepts JSON text or a file; unknown keys are refused."""
    text = '[{"target": "taskSDK", "kind": "delay", "delay_s": 0.5, "times": 3}]'
    path = tmp_path / "faults.json"
    path.write_text(text)
    assert load_faults(text) == load_faults(str(path)) == load_faults(path)
    assert load_faults(text)[0] == FaultRule(target="taskSDK", kind="delay", delay_s=0.5, times=3)
    with pytest.raises(ValueError, match="unknown fault keys: colour"):
        load_faults('{"target": "me", "colour": "red"}')


def test_faults_given_at_start(emulator_factory: Any) -> None:
    """Faults passed when serving are active from the first request."""
    emulator = emulator_factory(faults=(FaultRule(target="me", status=500),))
    assert _me(emulator).status_code == 500
    assert _me(emulator).status_code == 200

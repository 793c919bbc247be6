"""The emulator over real sockets: transport, auth, errors, storage signatures, admin routes."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import requests

from autolabel.emulator import EmulatorHandle

ME = "query currentUserSDK { me { userId } }"


def _post(
    emulator: EmulatorHandle,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    gzipped: bool = True,
) -> requests.Response:
    payload = json.dumps({"query": query, "variables": variables or {}}).encode()
    headers = {"ApiKey": key or emulator.api_key, "Content-Type": "application/json"}
    if gzipped:
        payload = base64.b64encode(gzip.compress(payload))
        headers["Content-Encoding-RB"] = "gzip"
    return requests.post(f"{emulator.url}/graphql/", data=payload, headers=headers, timeout=10)


def test_gzip_base64_and_plain_json_bodies_both_work(emulator: EmulatorHandle) -> None:
    """The SDK's gzip+base64 body and a plain JSON body give the same JSON answer."""
    for gzipped in (True, False):
        answer = _post(emulator, ME, gzipped=gzipped)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json() == {"data": {"me": {"userId": emulator.key_user_id}}}

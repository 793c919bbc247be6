"""Talking to the served emulator over real sockets, including requests no client would send.

:func:`graphql` posts a document the way the SDK does (``base64(gzip(JSON))``) or as plain
JSON. :func:`raw` writes the exact bytes of a request (any method, target, headers and
body, malformed ones included), half-closes the socket so that the server sees where the
input ends, and parses the answer; a server that hangs fails it with ``TimeoutError`` and
one that drops the connection with :class:`NoAnswer`.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from autolabel.emulator import EmulatorHandle

REDBRICK_STORAGE = "22222222-2222-2222-2222-222222222222"
#: The GraphQL documents the official SDK sends, by operation name and SDK version.
DOCUMENTS: dict[str, dict[str, str]] = json.loads(
    (Path(__file__).parent / "data" / "graphql-documents.json").read_text()
)


class NoAnswer(Exception):
    """The server closed the connection without an HTTP answer."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def port_of(emulator: EmulatorHandle) -> int:
    """The port the emulator listens on."""
    port = urlsplit(emulator.url).port
    assert port is not None
    return port


def gzip_body(payload: dict[str, Any]) -> bytes:
    """``base64(gzip(JSON))``, the SDK's request body."""
    return base64.b64encode(gzip.compress(json.dumps(payload).encode()))


def graphql(
    emulator: EmulatorHandle,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    gzipped: bool = True,
) -> requests.Response:
    """POST a GraphQL document with ``key`` (default: the seeded key)."""
    payload: dict[str, Any] = {"query": query, "variables": variables or {}}
    headers = {"ApiKey": key or emulator.api_key, "Content-Type": "application/json"}
    body = json.dumps(payload).encode()
    if gzipped:
        body = gzip_body(payload)
        headers["Content-Encoding-RB"] = "gzip"
    return requests.post(f"{emulator.url}/graphql/", data=body, headers=headers, timeout=30)


def sdk_document(name: str) -> str:
    """The document the official SDK 2.35.4 sends for operation ``name``."""
    return DOCUMENTS[name]["2.35.4"]


def presign_items(
    emulator: EmulatorHandle,
    items: list[str],
    *,
    key: str | None = None,
    org_id: str | None = None,
) -> Any:
    """``presignItemsSDK`` as the SDK sends it: the whole JSON answer."""
    variables = {
        "orgId": org_id or emulator.org_id, "storageId": REDBRICK_STORAGE, "items": items,
    }  # fmt: skip
    return graphql(emulator, sdk_document("presignItemsSDK"), variables, key=key).json()


def presign_uploads(
    emulator: EmulatorHandle,
    names: list[str],
    *,
    key: str | None = None,
    ids: tuple[str, str] | None = None,
) -> Any:
    """``presignUploadsSDK`` for label files (``filesSeg``), as the SDK sends it: the answer."""
    org_id, project_id = ids or (emulator.org_id, emulator.project_id)
    variables = {
        "orgId": org_id, "projectId": project_id, "filesData": [],
        "fileTypeData": "application/json", "fileEncodingData": "gzip", "filesSeg": names,
        "fileTypeSeg": "application/octet-stream", "fileEncodingSeg": None,
    }  # fmt: skip
    return graphql(emulator, sdk_document("presignUploadsSDK"), variables, key=key).json()


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    """The bytes of one request, headers exactly as given (no Content-Length is added)."""
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1", "replace") + b"\r\n" + body


def exchange(port: int, data: bytes, *, timeout: float = 10.0, method: str = "GET") -> Answer:
    """Send ``data`` on a new loopback connection, half-close, and read the answer
    (``method`` tells whether the answer has a body: not for HEAD)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; its answer is still to be read
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            body = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            raise NoAnswer(str(exc)) from None
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, headers, body)


def raw(
    emulator: EmulatorHandle,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One request written byte for byte; ``Host`` is added first unless ``host=""``."""
    port = port_of(emulator)
    given = list(headers or [])
    if host != "":
        given.insert(0, ("Host", host or f"localhost:{port}"))
    data = request_bytes(method, target, given, body)
    return exchange(port, data, timeout=timeout, method=method)

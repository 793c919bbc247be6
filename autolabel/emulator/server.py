"""The emulator's HTTP front: RedBrick's GraphQL endpoint, presigned storage, admin routes.

Routes (protocol §1, §3, §8.1):

* ``POST /graphql/`` (also ``/api/graphql/``): the body is ``base64(gzip(JSON))`` when the
  ``Content-Encoding-RB: gzip`` header is sent (the SDK always does), else plain JSON. The
  ``ApiKey`` header must hold a known key, else 401. Answers are ``application/json``.
* ``PUT /storage/<key>?expires=..&signature=..`` and ``GET`` likewise: presigned object
  storage; a bad signature, another method or an expired URL gets 403.
* ``/_emulator/...``: admin routes (:mod:`autolabel.emulator.admin`).

Faults (:mod:`autolabel.emulator.faults`) are drawn per request once the operation is
known: GraphQL requests by operation name and root fields, storage by ``storage:GET`` /
``storage:PUT``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import graphql

from autolabel.emulator.admin import PREFIX, handle_admin
from autolabel.emulator.faults import FaultRule, inject_field_error
from autolabel.emulator.service import Emulator, error_body, parse_operation
from autolabel.emulator.storage import StorageRefused

GRAPHQL_PATHS = ("/graphql/", "/graphql", "/api/graphql/", "/api/graphql")


class _Dropped(Exception):
    """A drop fault fired: close the connection without answering."""


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to an :class:`Emulator`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the events table is the log."""

    # -- plumbing ---------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), headers=headers)

    def _apply_faults(
        self, targets: set[str], response_keys: tuple[str, ...] = ()
    ) -> bool | FaultRule:
        """Apply the faults drawn for ``targets``; True when one already answered, the rule
        when a ``field_error`` is to be put into the normal answer, else False."""
        delay, rule = self.server.emulator.faults.draw(targets)
        if delay:
            time.sleep(delay)
        if rule is None:
            return False
        if rule.kind == "field_error":
            return rule
        if rule.kind == "drop":
            raise _Dropped
        if rule.kind == "graphql_error":
            self._send_json(200, error_body([rule.message], response_keys))
            return True
        self._send_status_fault(rule)
        return True

    def _send_status_fault(self, rule: FaultRule) -> None:
        headers = {}
        if rule.retry_after is not None:
            headers["Retry-After"] = f"{rule.retry_after:g}"
        self._send_json(rule.status, {"errors": [{"message": rule.message}]}, headers)

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        try:
            if parts.path.startswith(PREFIX):
                status, payload = handle_admin(
                    self.server.emulator, method, parts.path, query, self._read_body()
                )
                self._send_json(status, payload)
            elif parts.path.startswith("/storage/"):
                self._storage(method, parts.path[len("/storage/") :], query)
            elif method == "POST" and parts.path in GRAPHQL_PATHS:
                self._graphql()
            else:
                self._read_body()
                self._send_json(404, {"errors": [{"message": f"no route {method} {parts.path}"}]})
        except _Dropped:
            self.close_connection = True

    def do_GET(self) -> None:
        """Storage downloads and admin reads."""
        self._route("GET")

    def do_PUT(self) -> None:
        """Storage uploads."""
        self._route("PUT")

    def do_POST(self) -> None:
        """GraphQL and admin writes."""
        self._route("POST")

    def do_DELETE(self) -> None:
        """Admin deletes."""
        self._route("DELETE")

    # -- storage ----------------------------------------------------------------------------

    def _storage(self, method: str, raw_key: str, query: dict[str, str]) -> None:
        blobs = self.server.emulator.blobs
        body = self._read_body() if method == "PUT" else b""
        if method not in ("GET", "PUT"):
            self._send_json(405, {"error": f"{method} not allowed on storage"})
            return
        if self._apply_faults({"storage", f"storage:{method}"}) is True:
            return
        try:
            key = blobs.check(method, raw_key, query)
            if method == "PUT":
                encoding = self.headers.get("Content-Encoding")
                blobs.write(
                    key, body, content_type=self.headers.get("Content-Type"), encoding=encoding
                )
                self._send(200, b"", content_type="text/plain")
                return
            data, content_type, encoding = blobs.read(key)
        except StorageRefused as exc:
            self._send_json(exc.status, {"error": str(exc)})
            return
        headers = {"Content-Encoding": encoding} if encoding else {}
        self._send(
            200, data, content_type=content_type or "application/octet-stream", headers=headers
        )

    # -- GraphQL ----------------------------------------------------------------------------

    def _decode_request(self, raw: bytes) -> dict[str, Any]:
        if self.headers.get("Content-Encoding-RB", "").lower() == "gzip":
            raw = gzip.decompress(base64.b64decode(raw, validate=False))
        payload = json.loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise ValueError("the body must be a JSON object with a query string")
        return payload

    def _graphql(self) -> None:
        emulator = self.server.emulator
        raw = self._read_body()
        try:
            payload = self._decode_request(raw)
            op = parse_operation(payload["query"], payload.get("operationName"))
        except (ValueError, OSError, binascii.Error, EOFError) as exc:
            self._send_json(400, error_body([f"cannot decode the request body: {exc}"]))
            return
        except graphql.GraphQLError as exc:
            self._send_json(400, error_body([exc.message]))
            return
        fault = self._apply_faults(op.targets, op.response_keys)
        if fault is True:
            return
        caller = emulator.caller_for_key(self.headers.get("ApiKey"))
        if caller is None:
            self._send_json(401, error_body(["Invalid API key"]))
            return
        variables = payload.get("variables")
        status, body = emulator.execute(
            op, variables if isinstance(variables, dict) else {}, caller
        )
        if isinstance(fault, FaultRule) and status == 200 and op.response_keys:
            body = inject_field_error(body, fault, op.response_keys[0])
        self._send_json(status, body)

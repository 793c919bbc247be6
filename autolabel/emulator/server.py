"""The emulator's HTTP front: RedBrick's GraphQL endpoint, presigned storage, admin routes.

Routes (protocol §1, §3, §8.1):

* ``POST /graphql/`` (also ``/api/graphql/``): the body is ``base64(gzip(JSON))`` when the
  ``Content-Encoding-RB: gzip`` header is sent (the SDK always does), else plain JSON. The
  ``ApiKey`` header must hold a known key, else HTTP 500 at once, as RedBrick refuses a key
  (redbrick/common/client.py reads a fast 5xx as "may indicate an invalid API key"). Answers
  are ``application/json``.
* ``PUT /storage/<key>?expires=..&signature=..`` and ``GET`` likewise: presigned object
  storage; a bad signature, another method or an expired URL gets 403.
* ``/_emulator/...``: admin routes (:mod:`autolabel.emulator.admin`), behind the admin token.

The server is safe to leave running on a workstation. The cheap checks come before any
work: the body's declared length against the route's limit (:mod:`autolabel.emulator.bodies`),
then the API key, the presigned signature or the admin token, and only then is the body
read (bounded), decoded (bounded) and parsed. Every request gets an answer: a 4xx for what
it did wrong, a 500 naming the error if the emulator itself fails; a body left unread is
drained or the connection closed. Sockets time out after :data:`SOCKET_TIMEOUT_S`.

Faults (:mod:`autolabel.emulator.faults`) are drawn per request once the operation is
known: GraphQL requests by operation name and root fields, storage by ``storage:GET`` /
``storage:PUT``.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import graphql

from autolabel.emulator import admin, bodies
from autolabel.emulator.bodies import RequestRefused
from autolabel.emulator.entities import UserRecord
from autolabel.emulator.faults import FaultRule, inject_field_error
from autolabel.emulator.service import Emulator, Operation, error_body

GRAPHQL_PATHS = ("/graphql/", "/graphql", "/api/graphql/", "/api/graphql")
#: A socket read or write that waits longer than this ends the connection.
SOCKET_TIMEOUT_S = 60.0
#: Reads are done in chunks of this size (uploads stream to disk through it).
CHUNK = 1024 * 1024
#: After a refusal that closes the connection, unread input is drained this long at most,
#: so that the client reads the answer instead of a connection reset.
LINGER_S = 2.0


class _Dropped(Exception):
    """A drop fault fired: close the connection without answering."""


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to an :class:`Emulator`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], emulator: Emulator, *, admin_token: str | None = None
    ) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator
        #: The secret the admin routes require (see :mod:`autolabel.emulator.admin`).
        self.admin_token = admin_token or secrets.token_urlsafe(32)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    #: An answer goes out as two writes (headers, then body). With Nagle's algorithm on,
    #: the body waits for the client's delayed ACK of the headers: about 40 ms added to
    #: every request on loopback, which a service behind a load balancer does not add.
    #: TCP_NODELAY changes when bytes leave, never what is answered.
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer
    _unread = 0
    _linger = False

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the events table is the log."""

    # -- plumbing ---------------------------------------------------------------------------

    def _chunks(self) -> Iterator[bytes]:
        """The body, chunk by chunk; 400 (and the connection closed) when it ends early."""
        while self._unread > 0:
            chunk = self.rfile.read(min(CHUNK, self._unread))
            if not chunk:
                self._unread = 0
                self.close_connection = True
                raise RequestRefused(400, "the body is shorter than its Content-Length")
            self._unread -= len(chunk)
            yield chunk

    def _read_body(self) -> bytes:
        """The whole body (its length was checked against the route's limit)."""
        return b"".join(self._chunks())

    def _drain(self) -> None:
        """Discard what is left of the body, so the next request on the connection parses."""
        try:
            for _ in self._chunks():
                pass
        except RequestRefused:
            pass

    def finish(self) -> None:
        """Close; after a refusal that left input unread, drain it a moment first."""
        super().finish()
        if not self._linger:
            return
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            deadline = time.monotonic() + LINGER_S
            while time.monotonic() < deadline and self.connection.recv(CHUNK):
                pass
        except OSError:
            pass

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
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), headers=headers)

    def _apply_faults(
        self, targets: set[str], response_keys: tuple[str, ...] = ()
    ) -> bool | FaultRule:
        """Apply the faults drawn for ``targets``; True when one already answered, the rule
        when :meth:`_graphql` is to carry it out (a ``field_error`` put into the normal
        answer, a ``late_commit``), else False."""
        delay, rule = self.server.emulator.faults.draw(targets)
        if delay:
            time.sleep(delay)
        if rule is None:
            return False
        if rule.kind in ("field_error", "late_commit"):
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

    def _refuse(self, status: int, message: str) -> None:
        self._send_json(status, {"errors": [{"message": message}], "error": message})

    def _route(self, method: str) -> None:
        self._unread, self._linger = 0, False
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        try:
            try:
                self._dispatch(method, parts.path, query)
            except RequestRefused as exc:
                self._refuse(exc.status, str(exc))
            except (_Dropped, TimeoutError, ConnectionError):
                self.close_connection = True
                return
            except Exception as exc:  # an emulator bug: answer it, never drop the connection
                print(f"autolabel emulator: {method} {parts.path}: {exc!r}", file=sys.stderr)
                self._refuse(500, f"emulator error: {type(exc).__name__}: {exc}")
            if self._unread and not self.close_connection:
                self._drain()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _dispatch(self, method: str, path: str, query: dict[str, str]) -> None:
        if method not in ("GET", "PUT", "POST", "DELETE"):
            self.close_connection = self._linger = True  # a HEAD answer has no body to send
            self._send_json(405, {"errors": [{"message": f"{method} is not served"}]})
            return
        if path.startswith(admin.PREFIX):
            limit = bodies.ADMIN_LIMIT
        elif path.startswith("/storage/"):
            limit = bodies.STORAGE_LIMIT
        else:
            limit = bodies.GRAPHQL_LIMIT
        try:
            self._unread = bodies.declared_length(self.headers, method, limit)
        except RequestRefused:
            self.close_connection = self._linger = True  # where the body ends is unknown
            raise
        if path.startswith(admin.PREFIX):
            self._admin(method, path, query)
        elif path.startswith("/storage/"):
            self._storage(method, path[len("/storage/") :], query)
        elif method == "POST" and path in GRAPHQL_PATHS:
            self._graphql()
        else:
            self._send_json(404, {"errors": [{"message": f"no route {method} {path[:200]}"}]})

    def _admin(self, method: str, path: str, query: dict[str, str]) -> None:
        refused = admin.refusal(
            self.headers, method, port=self.server.port, token=self.server.admin_token
        )
        if refused is not None:
            self._send_json(*refused)
            return
        status, payload = admin.handle_admin(
            self.server.emulator, method, path, query, self._read_body()
        )
        self._send_json(status, payload)

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

    def do_HEAD(self) -> None:
        """Not served (405)."""
        self._route("HEAD")

    def do_OPTIONS(self) -> None:
        """Not served (405): no CORS preflight is ever granted."""
        self._route("OPTIONS")

    def do_PATCH(self) -> None:
        """Not served (405)."""
        self._route("PATCH")

    # -- storage ----------------------------------------------------------------------------

    def _storage(self, method: str, raw_key: str, query: dict[str, str]) -> None:
        blobs = self.server.emulator.blobs
        if method not in ("GET", "PUT"):
            self._send_json(405, {"error": f"{method} not allowed on storage"})
            return
        if self._apply_faults({"storage", f"storage:{method}"}) is True:
            return
        key = blobs.check(method, raw_key, query)
        if method == "PUT":
            blobs.receive(
                key,
                self._chunks(),
                content_type=self.headers.get("Content-Type"),
                encoding=self.headers.get("Content-Encoding"),
            )
            self._send(200, b"", content_type="text/plain")
            return
        data, content_type, encoding = blobs.read(key)
        headers = {"Content-Encoding": encoding} if encoding else {}
        self._send(
            200, data, content_type=content_type or "application/octet-stream", headers=headers
        )

    # -- GraphQL ----------------------------------------------------------------------------

    def _graphql(self) -> None:
        emulator = self.server.emulator
        # follows redbrick/common/client.py: the key travels in the ApiKey header, so it is
        # checked before the body is read: no work for a stranger.
        caller = emulator.caller_for_key(self.headers.get("ApiKey"))
        if caller is None:
            # follows redbrick/common/client.py _check_status_msg: RedBrick answers an unknown
            # key with a fast 5xx, which the SDK reports as an authentication error.
            self._send_json(500, error_body(["Internal Server Error"]))
            return
        gzipped = self.headers.get("Content-Encoding-RB", "").lower() == "gzip"
        payload = bodies.decode_graphql(self._read_body(), gzipped=gzipped)
        try:
            op = emulator.operation(payload["query"], payload.get("operationName"))
        except graphql.GraphQLError as exc:
            self._send_json(400, error_body([exc.message]))
            return
        except RecursionError:
            self._send_json(400, error_body(["the document is nested too deeply"]))
            return
        fault = self._apply_faults(op.targets, op.response_keys)
        if fault is True:
            return
        variables = payload.get("variables")
        given = variables if isinstance(variables, dict) else {}
        if isinstance(fault, FaultRule) and fault.kind == "late_commit":
            self._commit_late(fault, op, given, caller)
            return
        status, body = emulator.execute(op, given, caller)
        if isinstance(fault, FaultRule) and status == 200 and op.response_keys:
            body = inject_field_error(body, fault, op.response_keys[0])
        self._send_json(status, body)

    def _commit_late(
        self, rule: FaultRule, op: Operation, variables: dict[str, Any], caller: UserRecord
    ) -> None:
        """A gateway gives up on the request while the server goes on with it: execute it
        ``rule.delay_s`` after arrival whatever becomes of the connection, and answer
        ``rule.status`` at once (none when 0: hold the connection, then close it).

        Follows redbrick/common/client.py (``_check_status_msg``): the real service's
        gateway answers 5xx after about 26-30 s, which the SDK reads as a timeout, not as
        a refusal -- the request may still be carried out behind it.
        """
        emulator = self.server.emulator

        def commit() -> None:
            time.sleep(rule.delay_s)
            try:
                emulator.execute(op, variables, caller)
            except Exception:  # the emulator was closed meanwhile: the commit never came
                return

        if not rule.status:
            commit()
            raise _Dropped
        threading.Thread(target=commit, name="late-commit", daemon=True).start()
        self._send_status_fault(rule)

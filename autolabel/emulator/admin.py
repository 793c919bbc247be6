"""Admin routes under ``/_emulator/``: drive an emulator running in another process.

They sit next to, never on, the GraphQL path. They take no API key but the admin token, a
random secret made each time the emulator is served and written to ``connection.json``
(``admin_token``), sent as ``Authorization: Bearer <token>``. A web page the user visits
must not reach them (CSRF, DNS rebinding), so :func:`refusal` turns away, before the body
is read: a ``Host`` that is not a loopback name with the served port (403), an ``Origin``
that is not that same loopback origin (403), a missing or wrong token (401), and a body
that is not ``Content-Type: application/json`` (415; browsers cannot send that cross-site
without a preflight, which the emulator never grants). :func:`call` is the client side,
for tests and scripts. Every answer is JSON.

=======  =====================================  ============================================
Method   Path                                   What
=======  =====================================  ============================================
GET      ``/_emulator/health``                  ``{"ok": true, "url": ...}``
GET      ``/_emulator/faults``                  ``{"faults": [rule, ...]}`` with counts
POST     ``/_emulator/faults``                  add a rule or a list of rules (faults.py)
DELETE   ``/_emulator/faults``                  remove every rule
GET      ``/_emulator/events[?task_id=ID]``     ``{"events": [...]}`` write attempts
GET      ``/_emulator/tasks``                   ``{"tasks": [...]}`` state of every task
GET      ``/_emulator/tasks/<id>``              one task's state with its latest labels
POST     ``/_emulator/tasks/<id>/assign``       ``{"user": email | user id | null}``
POST     ``/_emulator/users``                   ``{"name", "email"?, "api_key"?: bool}``
                                                -> ``{"user_id", "email", "api_key"}``
POST     ``/_emulator/act``                     ``{"user", "query", "variables"?}``: run a
                                                GraphQL document as that user
=======  =====================================  ============================================
"""

from __future__ import annotations

import hmac
import json
import urllib.error
import urllib.request
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

import graphql

from autolabel.emulator.bodies import decode_json
from autolabel.emulator.faults import load_faults
from autolabel.emulator.service import Emulator

PREFIX = "/_emulator/"
#: Host names a loopback server answers to (``Host`` and ``Origin`` are checked against them).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

Answer = tuple[int, dict[str, Any]]


def _object(raw: bytes) -> dict[str, Any]:
    payload = decode_json(raw)
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    return payload


def _loopback_host(value: str, port: int) -> bool:
    """True for ``localhost:PORT``, ``127.0.0.1:PORT`` or ``[::1]:PORT`` (any case)."""
    host, _, given_port = value.strip().lower().rpartition(":")
    return host in LOOPBACK_NAMES and given_port == str(port)


def refusal(headers: Message, method: str, *, port: int, token: str) -> Answer | None:
    """Why an admin request is refused, as the answer to send; None when it may go on."""
    host = headers.get("Host") or ""
    if len(headers.get_all("Host") or []) != 1 or not _loopback_host(host, port):
        return 403, {"error": f"admin routes answer only Host localhost:{port}"}
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme != "http" or not _loopback_host(parts.netloc, port):
            return 403, {"error": "cross-site requests to the admin routes are refused"}
    if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return 403, {"error": "cross-site requests to the admin routes are refused"}
    scheme, _, given = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode()
    ):
        return 401, {
            "error": "admin routes need Authorization: Bearer <admin_token of connection.json>"
        }
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if method != "GET" and content_type != "application/json":
        return 415, {"error": f"admin {method} requests need Content-Type: application/json"}
    return None


def call(
    url: str, token: str, method: str, route: str, payload: Any = None, *, timeout: float = 30
) -> tuple[int, Any]:
    """Call an admin route of the emulator at ``url``: its status and JSON answer.

    ``route`` is the part after ``/_emulator/`` (``"tasks"``, ``"faults"``...); ``token``
    is ``admin_token`` from ``connection.json``.
    """
    body = None
    if method != "GET":
        body = json.dumps({} if payload is None else payload).encode()
    request = urllib.request.Request(
        f"{url.rstrip('/')}{PREFIX}{route}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def _users(emulator: Emulator, payload: dict[str, Any]) -> Answer:
    if not payload.get("name"):
        return 400, {"error": "a user needs a name"}
    minted = emulator.mint_user(
        str(payload["name"]),
        email=payload.get("email"),
        api_key=bool(payload.get("api_key", True)),
    )
    return 200, {
        "user_id": minted.user_id,
        "email": minted.email,
        "name": minted.name,
        "api_key": minted.api_key,
    }


def _task_routes(emulator: Emulator, method: str, parts: list[str], raw: bytes) -> Answer:
    if method == "GET" and len(parts) == 1:
        return 200, {"tasks": emulator.tasks_state()}
    if method == "GET" and len(parts) == 2:
        return 200, emulator.task_state(parts[1])
    if method == "POST" and len(parts) == 3 and parts[2] == "assign":
        return 200, emulator.assign(parts[1], _object(raw).get("user"))
    return 404, {"error": f"no admin route {method} /_emulator/{'/'.join(parts)}"}


def handle_admin(
    emulator: Emulator, method: str, path: str, query: dict[str, str], raw: bytes
) -> Answer:
    """Answer one admin request (``path`` starts with ``/_emulator/``)."""
    parts = [p for p in path[len(PREFIX) :].split("/") if p]
    route = parts[0] if parts else ""
    try:
        if route == "health" and method == "GET":
            return 200, {"ok": True, "url": emulator.base_url}
        if route == "faults":
            if method == "POST":
                emulator.faults.add(*load_faults(decode_json(raw)))
            elif method == "DELETE":
                emulator.faults.clear()
            elif method != "GET":
                return 405, {"error": f"{method} not allowed on /_emulator/faults"}
            return 200, {"faults": emulator.faults.rules()}
        if route == "events" and method == "GET":
            return 200, {"events": emulator.events(query.get("task_id"))}
        if route == "tasks":
            return _task_routes(emulator, method, parts, raw)
        if route == "users" and method == "POST":
            return _users(emulator, _object(raw))
        if route == "act" and method == "POST":
            payload = _object(raw)
            return 200, emulator.run_as(
                str(payload["user"]), str(payload["query"]), payload.get("variables")
            )
    except KeyError as exc:
        return 404, {"error": str(exc.args[0] if exc.args else exc)}
    except (ValueError, TypeError, graphql.GraphQLError) as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": f"no admin route {method} {path}"}

"""Admin routes under ``/_emulator/``: drive an emulator running in another process.

They sit next to, never on, the GraphQL path and need no API key (the server only listens
on the loopback interface). Every answer is JSON.

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

import json
from typing import Any

import graphql

from autolabel.emulator.faults import load_faults
from autolabel.emulator.service import Emulator

PREFIX = "/_emulator/"

Answer = tuple[int, dict[str, Any]]


def _body(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8")) if raw.strip() else {}


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
        payload = _body(raw)
        return 200, emulator.assign(parts[1], payload.get("user"))
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
                emulator.faults.add(*load_faults(_body(raw)))
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
            return _users(emulator, _body(raw))
        if route == "act" and method == "POST":
            payload = _body(raw)
            return 200, emulator.run_as(
                str(payload["user"]), str(payload["query"]), payload.get("variables")
            )
    except KeyError as exc:
        return 404, {"error": str(exc.args[0] if exc.args else exc)}
    except (ValueError, TypeError, graphql.GraphQLError) as exc:
        return 400, {"error": str(exc)}
    return 404, {"error": f"no admin route {method} {path}"}

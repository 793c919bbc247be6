"""The emulator without HTTP: state, GraphQL execution, users, inspection.

:class:`Emulator` is what the HTTP server (:mod:`autolabel.emulator.server`), its admin
routes and the in-process :class:`~autolabel.emulator.handle.EmulatorHandle` share. It
executes a GraphQL request for a given caller and returns the HTTP status and JSON body the
real API would answer (protocol §1.3, §8.1): ``{"data": ...}`` without an ``errors`` key on
success; ``{"errors": [...], "data": {"<field>": null}}`` when a resolver refuses; 400 for
documents that do not parse or validate.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import graphql

from autolabel.emulator import assignment
from autolabel.emulator.entities import UserRecord
from autolabel.emulator.faults import FaultBook, FaultRule
from autolabel.emulator.resolvers import RequestContext
from autolabel.emulator.schema import build_executable_schema
from autolabel.emulator.stages import RuleViolation
from autolabel.emulator.storage import BlobStore
from autolabel.emulator.store import Store

#: The most tokens a GraphQL document may have (the SDK's largest has under 300).
MAX_DOCUMENT_TOKENS = 10_000

#: Parsed and validated documents kept per emulator (the SDK sends about 25 distinct ones).
DOCUMENT_CACHE_SIZE = 128
#: Longer documents are parsed and validated per request, not kept (the SDK's are < 5 kB).
CACHED_DOCUMENT_CHARS = 16_384

#: RedBrick API keys are 43 characters long (the SDK refuses any other length).
API_KEY_LENGTH = 43


def new_api_key() -> str:
    """A fresh random API key of the length RedBrick uses, never starting with ``-`` (a key
    that looks like a flag would break ``--api-key KEY`` on any command line)."""
    while True:
        key = secrets.token_urlsafe(32)
        if len(key) != API_KEY_LENGTH:  # token_urlsafe(32) is always 43 characters
            raise RuntimeError("unexpected API key length")
        if not key.startswith("-"):
            return key


@dataclass(frozen=True)
class MintedUser:
    """A user made by :meth:`Emulator.mint_user`; ``api_key`` lets it call the API."""

    user_id: str
    email: str
    name: str
    api_key: str | None


@dataclass(frozen=True)
class Operation:
    """The parsed request: its document, operation name and root field names."""

    document: graphql.DocumentNode
    name: str | None
    root_fields: tuple[str, ...]
    response_keys: tuple[str, ...]
    #: The document's validation errors against the emulator's schema, when known
    #: (:meth:`Emulator.operation`); None: :meth:`Emulator.execute` validates it.
    problems: tuple[str, ...] | None = None

    @property
    def targets(self) -> set[str]:
        """What a fault rule may target: the operation name and the root fields."""
        return {*self.root_fields, *([self.name] if self.name else [])}


def parse_operation(query: str, operation_name: str | None = None) -> Operation:
    """Parse a document and find the operation it runs; raises ``graphql.GraphQLError``.

    A document over :data:`MAX_DOCUMENT_TOKENS` tokens is refused unparsed.
    """
    document = graphql.parse(query, max_tokens=MAX_DOCUMENT_TOKENS)
    operations = [d for d in document.definitions if isinstance(d, graphql.OperationDefinitionNode)]
    chosen = [
        o for o in operations if not operation_name or (o.name and o.name.value == operation_name)
    ]
    if len(chosen) != 1:
        raise graphql.GraphQLError("the document must hold exactly one operation to run")
    op = chosen[0]
    fields = [s for s in op.selection_set.selections if isinstance(s, graphql.FieldNode)]
    return Operation(
        document=document,
        name=op.name.value if op.name else None,
        root_fields=tuple(f.name.value for f in fields),
        response_keys=tuple((f.alias or f.name).value for f in fields),
    )


def error_body(messages: Iterable[str], response_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A GraphQL error answer; ``data`` holds null for each root field (protocol §1.3)."""
    return {
        "errors": [{"message": m} for m in messages],
        "data": {key: None for key in response_keys} or None,
    }


class Emulator:
    """One emulated RedBrick over a data directory (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        base_url: str = "http://localhost",
        faults: Iterable[FaultRule] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir)
        self.blobs = BlobStore(self.store)
        self.faults = FaultBook(faults)
        self.schema = build_executable_schema()
        self.base_url = base_url
        self._documents: dict[tuple[str, str | None], Operation] = {}

    def close(self) -> None:
        """Release the database."""
        self.store.close()

    # -- GraphQL ----------------------------------------------------------------------------

    def caller_for_key(self, api_key: str | None) -> UserRecord | None:
        """The user of an API key, or None when it is missing or unknown."""
        return self.store.user_by_key(api_key) if api_key else None

    def operation(self, query: str, operation_name: str | None = None) -> Operation:
        """:func:`parse_operation`, validated against the schema, kept for the next request
        with the same document: a client sends the same few documents over and over, and
        parsing and validating one again gives the same result (the answers do not change).
        Raises like :func:`parse_operation`."""
        keep = len(query) <= CACHED_DOCUMENT_CHARS and isinstance(operation_name, str | None)
        key = (query, operation_name)
        known = self._documents.get(key) if keep else None
        if known is not None:
            return known
        op = parse_operation(query, operation_name)
        problems = tuple(e.message for e in graphql.validate(self.schema, op.document))
        op = dataclasses.replace(op, problems=problems)
        if keep:
            if len(self._documents) >= DOCUMENT_CACHE_SIZE:
                self._documents.clear()
            self._documents[key] = op
        return op

    def execute(
        self, op: Operation, variables: dict[str, Any] | None, caller: UserRecord
    ) -> tuple[int, dict[str, Any]]:
        """Run a parsed operation as ``caller``: the HTTP status and JSON body to answer."""
        if op.problems is None:
            problems = tuple(e.message for e in graphql.validate(self.schema, op.document))
        else:
            problems = op.problems
        if problems:
            return 400, error_body(problems)
        context = RequestContext(self.store, self.blobs, caller, self.base_url)
        result = graphql.execute(
            self.schema,
            op.document,
            variable_values=variables or {},
            context_value=context,
            operation_name=op.name,
        )
        if isinstance(result, graphql.ExecutionResult) and not result.errors:
            return 200, {"data": result.data}
        if not isinstance(result, graphql.ExecutionResult):
            raise RuntimeError("the emulator's resolvers are synchronous")
        body = error_body((e.message for e in result.errors or []), op.response_keys)
        if result.data:
            body["data"] = {**(body["data"] or {}), **result.data}
        return 200, body

    def run_as(
        self, user: str, query: str, variables: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Execute a document as a user (email or user id): what that person would get."""
        caller = self.store.user(user)
        if caller is None:
            raise ValueError(f"no user {user!r} in the emulator")
        return self.execute(parse_operation(query), variables, caller)[1]

    # -- users ------------------------------------------------------------------------------

    def mint_user(
        self,
        name: str,
        *,
        email: str | None = None,
        api_key: bool = True,
        org_id: str | None = None,
        role: str = "MEMBER",
    ) -> MintedUser:
        """Add a person (with ``email``) or an API-key user (without) to the org.

        With ``api_key=True`` the user also gets a key to call the API as them.
        """
        org = org_id or self.store.org_ids()[0]
        user_id = f"API:{uuid.uuid4()}" if email is None else str(uuid.uuid4())
        user = UserRecord(user_id, org, email or "", name, "", role)
        key = new_api_key() if api_key else None
        self.store.add_user(user, api_key=key)
        return MintedUser(user_id=user_id, email=user.email, name=name, api_key=key)

    # -- inspection and human actions -------------------------------------------------------

    def task_state(self, task_id: str) -> dict[str, Any]:
        """A task's stage, state, assignee, review state and latest labels, as JSON."""
        task = self.store.task(task_id)
        if task is None:
            raise KeyError(f"no task {task_id}")
        latest = self.store.latest_labels(task_id)
        state = asdict(task)
        state["latest_labels"] = asdict(latest) if latest else None
        state["label_versions"] = len(self.store.label_history(task_id))
        return state

    def tasks_state(self) -> list[dict[str, Any]]:
        """:meth:`task_state` of every task, in creation order."""
        return [self.task_state(t.task_id) for t in self.store.tasks()]

    def events(self, task_id: str | None = None) -> list[dict[str, Any]]:
        """The write attempts, oldest first, as JSON."""
        return [asdict(e) for e in self.store.events(task_id)]

    def assign(self, task_id: str, user: str | list[str] | None) -> dict[str, Any]:
        """Assign a task in its stage to a user (email or user id), or unassign (None);
        a list names every labeler of a consensus stage (the first is the assignee).

        This is what an org admin does on the Data page; the event is recorded as done by
        the org's owner (its first member).
        """
        task = self.store.task(task_id)
        project = self.store.project(task.project_id) if task else None
        if task is None or project is None:
            raise KeyError(f"no task {task_id}")
        actor = self.store.users(project.org_id)[0]
        try:
            assignment.assign(
                self.store,
                actor,
                project,
                task_ids=[task_id],
                emails=[user] if isinstance(user, str) else (list(user) if user else None),
            )
        except RuleViolation as exc:
            raise ValueError(str(exc)) from None
        return self.task_state(task_id)

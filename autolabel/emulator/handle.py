"""Serving an emulator, and :class:`EmulatorHandle`: the in-process remote control.

``serve_in_thread(data_dir)`` starts the HTTP server on a free loopback port in a daemon
thread and yields a handle with the connection (``url`` always contains ``localhost`` so the
official SDK keeps it as it is; ``admin_token`` opens the admin routes), fault control,
state inspection (tasks, labels, events, stored files) and helpers that act as other people
(a human labeler or reviewer).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autolabel.emulator import admin, assignment, workflow
from autolabel.emulator.datapoints import REDBRICK_STORAGE
from autolabel.emulator.entities import (
    EventRecord,
    LabelRecord,
    ProjectRecord,
    TaskRecord,
    UserRecord,
)
from autolabel.emulator.faults import FaultRule
from autolabel.emulator.seed import HUMAN_EMAIL, Connection
from autolabel.emulator.server import EmulatorHTTPServer
from autolabel.emulator.service import Emulator, MintedUser
from autolabel.emulator.views import PROJECT_STATUSES, project_status_key

LOOPBACK = "127.0.0.1"


class Actor:
    """Acts as one user on the emulator, with the same rules as the API (no HTTP).

    Methods raise :class:`~autolabel.emulator.stages.RuleViolation` when the server
    would refuse the write.
    """

    def __init__(self, emulator: Emulator, user: UserRecord, project_id: str) -> None:
        self._emulator = emulator
        self.user = user
        self._project_id = project_id

    def _project(self) -> ProjectRecord:
        project = self._emulator.store.project(self._project_id)
        if project is None:
            raise KeyError(f"no project {self._project_id}")
        return project

    def save_labels(
        self,
        task_id: str,
        *,
        stage_name: str = "Label",
        finished: bool = False,
        labels: list[dict[str, Any]] | None = None,
        label_file: bytes | None = None,
    ) -> None:
        """Save labels (a draft unless ``finished``); ``label_file`` is a NIfTI for series 0."""
        project = self._project()
        labels_map: list[dict[str, Any] | None] = []
        if label_file is not None:
            key = f"{project.org_id}/{project.project_id}/labels/{uuid.uuid4()}/0.nii.gz"
            self._emulator.blobs.write(key, label_file, content_type=None, encoding=None)
            labels_map = [{"labelName": key, "seriesIndex": 0}]
        workflow.save_labels(
            self._emulator.store, self.user, project, task_id=task_id, stage_name=stage_name,
            finished=finished, labels_data=json.dumps(labels or []), labels_data_path=None,
            labels_map=labels_map, storage_id=REDBRICK_STORAGE,
            file_exists=self._emulator.blobs.exists, copy_file=self._emulator.blobs.copy,
        )  # fmt: skip

    def submit(self, task_id: str, *, stage_name: str = "Label") -> None:
        """Submit with the labels the task already has."""
        workflow.submit_existing(
            self._emulator.store, self.user, self._project(), task_id=task_id, stage_name=stage_name
        )

    def review(self, task_id: str, *, passed: bool, stage_name: str = "Review_1") -> None:
        """Accept (``passed=True``) or reject a task in a review stage."""
        workflow.review(
            self._emulator.store, self.user, self._project(), task_id=task_id,
            stage_name=stage_name, passed=passed,
        )  # fmt: skip

    def move_to_start(self, task_id: str) -> None:
        """Send a Ground Truth task back to Label."""
        workflow.move_to_start(self._emulator.store, self.user, self._project(), task_id=task_id)

    def claim(self, task_id: str) -> None:
        """Assign the task (in its current stage) to this user."""
        assignment.assign(
            self._emulator.store, self.user, self._project(), task_ids=[task_id],
            emails=[self.user.user_id],
        )  # fmt: skip


class EmulatorHandle:
    """A running emulator, seen from the test or script that started it.

    Attributes: ``url`` (``http://localhost:PORT``), ``org_id``, ``project_id``,
    ``api_key`` (the seeded key), ``admin_token`` (the admin routes' secret), ``data_dir``
    and ``emulator`` (the :class:`Emulator`).
    """

    def __init__(self, emulator: Emulator, connection: Connection) -> None:
        self.emulator = emulator
        self.url = connection.url or emulator.base_url
        self.org_id = connection.org_id
        self.project_id = connection.project_id
        self.api_key = connection.api_key
        self.admin_token = connection.admin_token or ""
        self.data_dir = emulator.data_dir

    @property
    def connection(self) -> Connection:
        """The connection of this emulator (what ``connection.json`` holds)."""
        return Connection(self.url, self.org_id, self.project_id, self.api_key, self.admin_token)

    def admin(self, method: str, route: str, payload: Any = None) -> tuple[int, Any]:
        """Call an admin route over HTTP with the token: status and JSON answer."""
        return admin.call(self.url, self.admin_token, method, route, payload)

    def environment(self) -> dict[str, str]:
        """The ``REDBRICK_*`` variables that point an ``autolabel`` process at this emulator
        (with the seeded key), on top of this process's environment."""
        import os

        return {
            **os.environ,
            "REDBRICK_URL": self.url,
            "REDBRICK_ORG_ID": self.org_id,
            "REDBRICK_PROJECT_ID": self.project_id,
            "REDBRICK_API_KEY": self.api_key,
        }

    def cli_flags(self) -> list[str]:
        """The ``autolabel`` command-line flags that connect to this emulator with the seeded
        key (for tests and scripts of this local emulator only). The key is joined to its
        flag with ``=``: a key may start with ``-``, which argparse would take for a flag."""
        return [
            "--url", self.url, "--org", self.org_id,
            "--project", self.project_id, f"--api-key={self.api_key}",
        ]  # fmt: skip

    @property
    def key_user_id(self) -> str:
        """The user id (``API:<uuid>``) of the seeded API key."""
        user = self.emulator.caller_for_key(self.api_key)
        if user is None:
            raise KeyError("the seeded API key is not in the database")
        return user.user_id

    @property
    def human_email(self) -> str:
        """Email of the seeded human labeler."""
        return HUMAN_EMAIL

    # -- faults ------------------------------------------------------------------------------

    def add_fault(self, target: str, kind: str = "status", **options: Any) -> FaultRule:
        """Inject a fault (see :mod:`autolabel.emulator.faults` for ``options``)."""
        rule = FaultRule(target=target, kind=kind, **options)
        self.emulator.faults.add(rule)
        return rule

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self.emulator.faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules with their remaining ``times`` and ``fired`` counts."""
        return self.emulator.faults.rules()

    # -- state -------------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskRecord:
        """A task's current record (stage, state, assignee...); KeyError when unknown."""
        task = self.emulator.store.task(task_id)
        if task is None:
            raise KeyError(f"no task {task_id}")
        return task

    def tasks(self, stage_name: str | None = None) -> list[TaskRecord]:
        """The project's tasks in creation order, optionally only those in one stage."""
        tasks = self.emulator.store.tasks(self.project_id)
        return [t for t in tasks if stage_name is None or t.stage_name == stage_name]

    def task_ids(self, stage_name: str | None = None) -> list[str]:
        """Ids of :meth:`tasks`."""
        return [t.task_id for t in self.tasks(stage_name)]

    def latest_labels(self, task_id: str) -> LabelRecord | None:
        """The newest saved labels of a task."""
        return self.emulator.store.latest_labels(task_id)

    def label_history(self, task_id: str) -> list[LabelRecord]:
        """Every saved labels version of a task, oldest first."""
        return self.emulator.store.label_history(task_id)

    def labels(self, task_id: str) -> list[dict[str, Any]]:
        """The latest label objects of a task (parsed ``labelsData``), [] when none."""
        latest = self.latest_labels(task_id)
        return list(json.loads(latest.labels_data)) if latest else []

    def read_file(self, key: str) -> bytes:
        """The bytes of a stored object (item or label file)."""
        return self.emulator.blobs.read(key)[0]

    def label_files(self, task_id: str) -> list[bytes]:
        """The bytes of the latest label files of a task, by series position."""
        latest = self.latest_labels(task_id)
        entries = latest.labels_map if latest else []
        return [self.read_file(e["labelName"]) for e in entries if e and e.get("labelName")]

    def events(self, task_id: str | None = None) -> list[EventRecord]:
        """Write attempts (accepted and refused), oldest first."""
        return self.emulator.store.events(task_id)

    def write_count(self, task_id: str, operation: str | None = None) -> int:
        """Accepted writes to a task, optionally of one operation (root field name)."""
        return sum(
            1
            for e in self.events(task_id)
            if e.accepted and (operation is None or e.operation == operation)
        )

    def key_writes(self) -> dict[str, int]:
        """Accepted label writes (``put*`` operations) by the seeded API key, per task;
        every task is listed, with 0 when the key never wrote it. Exactly-once tests use it.
        """
        counts = dict.fromkeys(self.task_ids(), 0)
        key_user = self.key_user_id  # a lookup: once, not per event
        for event in self.events():
            if (
                event.accepted
                and event.task_id in counts
                and event.user_id == key_user
                and event.operation.startswith("put")
            ):
                counts[event.task_id] += 1
        return counts

    def write_counts(self, operation: str | None = None) -> dict[str, int]:
        """Accepted writes per task id."""
        return dict(
            Counter(
                e.task_id
                for e in self.events()
                if e.accepted and e.task_id and (operation is None or e.operation == operation)
            )
        )

    # -- people ------------------------------------------------------------------------------

    def add_user(self, name: str, *, email: str | None = None, api_key: bool = True) -> MintedUser:
        """A new org member: a person (with ``email``) or an API key user; with a key."""
        return self.emulator.mint_user(name, email=email, api_key=api_key)

    def as_user(self, user: str) -> Actor:
        """Act as a user (email or user id) with the server's rules."""
        record = self.emulator.store.user(user)
        if record is None:
            raise KeyError(f"no user {user}")
        return Actor(self.emulator, record, self.project_id)

    def assign(self, task_id: str, user: str | list[str] | None) -> TaskRecord:
        """Assign a task in its stage to a user (email or user id), or unassign it; a list
        names every labeler of a consensus stage (the first is the assignee)."""
        self.emulator.assign(task_id, user)
        return self.task(task_id)

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, user: str | None = None
    ) -> dict[str, Any]:
        """Run a GraphQL document in-process as ``user`` (default: the seeded key)."""
        return self.emulator.run_as(user or self.key_user_id, query, variables)

    def set_stage_config(self, stage_name: str, **config: Any) -> None:
        """Change a stage's ``stageConfig`` keys, e.g. ``autoAssign=True``."""
        project = self.emulator.store.project(self.project_id)
        if project is None or not any(s["stageName"] == stage_name for s in project.stages):
            raise KeyError(f"no stage {stage_name} in project {self.project_id}")
        stages = [
            {**s, "stageConfig": {**(s.get("stageConfig") or {}), **config}}
            if s["stageName"] == stage_name
            else s
            for s in project.stages
        ]
        self.emulator.store.set_stages(self.project_id, stages)

    def set_project_status(self, status: str) -> None:
        """Set the project's ``status``: ``REMOVING`` is an archived project,
        ``CREATION_FAILURE`` one that failed creation (redbrick/project.py reads both)."""
        if status not in PROJECT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(PROJECT_STATUSES)}")
        self.emulator.store.set_meta(project_status_key(self.project_id), status)

    def set_presign_ttl(self, seconds: float) -> None:
        """How long newly presigned storage URLs stay valid (a negative value: expired)."""
        self.emulator.blobs.ttl_s = seconds


def _write_served(data_dir: Path, connection: Connection, url: str, token: str) -> Connection:
    served = dataclasses.replace(connection, url=url, admin_token=token)
    served.save(data_dir)
    return served


@contextmanager
def serve_in_thread(
    data_dir: str | Path,
    port: int = 0,
    *,
    faults: Iterable[FaultRule] = (),
    host: str = LOOPBACK,
) -> Iterator[EmulatorHandle]:
    """Serve a seeded ``data_dir`` on ``host:port`` (0 = a free port) in a daemon thread.

    ``connection.json`` gets the served URL and a new admin token. The server stops when
    the block exits.
    """
    connection = Connection.load(data_dir)
    emulator = Emulator(data_dir, faults=faults)
    token = secrets.token_urlsafe(32)
    server = EmulatorHTTPServer((host, port), emulator, admin_token=token)
    emulator.base_url = f"http://localhost:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="autolabel-emulator", daemon=True
    )
    thread.start()
    try:
        served = _write_served(Path(data_dir), connection, emulator.base_url, token)
        yield EmulatorHandle(emulator, served)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        emulator.close()


def serve_forever(
    data_dir: str | Path, port: int, *, faults: Iterable[FaultRule] = (), host: str = LOOPBACK
) -> None:
    """Serve until interrupted (the ``autolabel emulator serve`` command)."""
    with serve_in_thread(data_dir, port, faults=faults, host=host) as handle:
        print(f"emulator serving {handle.data_dir} at {handle.url}", flush=True)
        threading.Event().wait()

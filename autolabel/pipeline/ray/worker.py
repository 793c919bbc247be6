"""The Ray actor's body: one model, one RedBrick connection, the pipeline's per-task steps.

:class:`TaskWorker` is a plain class (Ray wraps it in :mod:`autolabel.pipeline.ray.cluster`), so
it imports no Ray. Its contract:

* created with the model reference, the device and the run options -- no secret;
* :meth:`TaskWorker.open` receives the connection (API key included) as a direct actor
  call, loads the model once and opens the project; it returns :class:`WorkerInfo`;
* :meth:`TaskWorker.prepare` runs fetch → infer → convert for one task with
  :class:`~autolabel.pipeline.steps.TaskSteps` (the local run's code) and returns
  :class:`Prepared`; it writes nothing to RedBrick and no ledger;
* :meth:`TaskWorker.send` writes one task, only with a :class:`~autolabel.pipeline.flow.WriteClaim` (the driver's
  committed ``writing`` intent), through ``TaskSteps.write`` -- the local run's guarded
  write: re-read, compare the labels marker, send once, re-read after a transport error.

Up to ``in_flight`` calls run at once on the actor's threads; inference is serialised
(one model per device), so downloads and uploads overlap it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autolabel.files import task_folder
from autolabel.pipeline.flow import WriteClaim
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.ray.messages import Prepared, Sent, TaskError, WorkerInfo
from autolabel.pipeline.steps import TaskSteps
from autolabel.redbrick import Task, get_project
from autolabel.settings import ConnectionSettings


class TaskWorker:
    """One actor of a Ray run (see the module docstring)."""

    def __init__(self, name: str, model: str, device: str, options: RunOptions) -> None:
        self.name = name
        self.model_ref = model
        self.device = device
        self.options = options
        self._steps: TaskSteps | None = None
        self._infer_lock = threading.Lock()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"autolabel-{name}-"))

    def __repr__(self) -> str:
        # Ray prefixes the actor's log lines with this: a name, never the connection.
        return f"TaskWorker({self.name})"

    def open(
        self, connection: ConnectionSettings, timeout: tuple[float, float] = (10.0, 60.0)
    ) -> WorkerInfo:
        """Open the project as the key, load the model; raises like a local run's start."""
        from autolabel.inference import load_model

        project = get_project(
            connection.org_id,
            connection.project_id,
            connection.api_key,
            url=connection.url,
            timeout=timeout,
        )
        model = load_model(self.model_ref, device=self.device)
        self._steps = TaskSteps(project, model, self.options)
        return WorkerInfo(
            name=self.name,
            node=socket.gethostname(),
            pid=os.getpid(),
            device=str(getattr(model, "device", self.device)),
            model=self._steps.key,
        )

    @property
    def steps(self) -> TaskSteps:
        if self._steps is None:
            raise RuntimeError(f"{self.name}: open() must be called first")
        return self._steps

    def prepare(self, task: Task) -> Prepared:
        """Fetch, predict and convert ``task``; a failure is returned, never raised."""
        steps, result = self.steps, Prepared(worker=self.name)
        phase = "fetch"
        try:
            fetched = steps.fetch(task, task_folder(self._scratch, task.task_id))
            result.fetch = fetched.report()
            phase = "infer"
            with self._infer_lock:
                prediction = steps.predict(fetched)
            result.infer_s, result.device_events = prediction.seconds, prediction.device_events
            phase = "write"
            result.converted = steps.convert(fetched, prediction.label_maps, prediction.confidence)
        except Exception as exc:  # per-task: the driver records it
            result.error = TaskError.of(phase, exc)
        return result

    def send(self, claim: WriteClaim, entries: Sequence[Mapping[str, Any]]) -> Sent | TaskError:
        """Write one task's ``entries`` under the driver's ``claim``; errors are returned."""
        try:
            done = self.steps.write(claim, entries)
            return Sent(seconds=done.seconds, note=done.note)
        except Exception as exc:
            return TaskError.of("write", exc)

    def close(self) -> None:
        """Close the connection and remove the scratch folder."""
        if self._steps is not None:
            self._steps.project.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

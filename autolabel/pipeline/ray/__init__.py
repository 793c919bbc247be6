"""Scale out on Ray: the same pipeline, its tasks spread over actors on many GPUs and machines.

:func:`run_on_ray` does what :func:`autolabel.pipeline.run` does, with the per-task work
done by Ray actors (one per GPU, or CPU actors): each actor loads the model once and runs
download → decode → infer → convert → upload for the tasks it is handed, with the local
run's own code (:class:`~autolabel.pipeline.steps.TaskSteps`).

One writer of record
--------------------
The driver (this process) keeps the ledger and decides every write; actors never touch
the ledger. For each task:

1. an actor fetches (re-read, guard: stage, assignee, no human labels), decodes, predicts
   and writes the label files on its own node, and returns a small report;
2. the driver records ``fetched``, ``predicted``, ``converted`` from it, then commits the
   ``writing`` intent and hands the actor a claim (:class:`~autolabel.pipeline.flow.WriteClaim`);
3. the actor -- the one holding the label files -- performs the guarded write of
   :func:`autolabel.pipeline.submit.write_task` (re-read, the labels marker unchanged, one send, a
   re-read after a transport error) and reports; the driver records the result. It does
   so under the task's write lock of its node (:mod:`autolabel.pipeline.tasklock`): in a local Ray
   run that lock also keeps out other autolabel runs on the machine; on a cluster each
   node's lock covers that node only.

So the local run's exactly-once and never-overwrite-a-person rules hold unchanged: the
intent is on disk before any send, in-doubt writes are settled by re-reading (at start,
and at once for an actor lost mid-write), and the guard re-reads right before the send.

What travels, and where
-----------------------
* Driver → actor, at creation: the run options, the model reference (card name or path)
  and the device. At start, one direct call (:meth:`TaskWorker.open`) carries the
  connection settings, API key included: it is an argument of an actor method call, sent
  over Ray's gRPC channel to that actor and held in its memory. It is never part of an
  actor-creation spec (which Ray's GCS keeps for restarts), a ``runtime_env`` or a log
  line (every ``repr`` hides it); small call arguments are inlined, not put in the object
  store, so nothing of it is spilled to disk.
* Driver → actor per task: the task record from the listing; later the claim and the
  ``series`` entries to write.
* Actor → driver: checksums, timings, volumes, file paths, ``series`` entries
  (``segmentMap`` and the label file's path on the actor's node). Images and label maps
  never leave the actor: it downloads and uploads them itself.
* Per-task results (label files, previews, payloads) are written under ``out_dir`` on the
  node that did the task: use a shared folder to collect them in one place.

The ledger lives on the driver's machine, in ``work_dir`` as for a local run, under the
work folder's lock (:mod:`autolabel.pipeline.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import uuid
from pathlib import Path

from autolabel.errors import ConfigError, WorkerLostError
from autolabel.ledger import Ledger, ledger_path
from autolabel.pipeline import conduct
from autolabel.pipeline.book import RunBook
from autolabel.pipeline.lock import lock_work_folder
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.ray.cluster import RayOptions, plan_actors, ray_session
from autolabel.pipeline.ray.driver import RayDriver
from autolabel.pipeline.summary import RunListener, RunSummary
from autolabel.redbrick import get_project
from autolabel.settings import ConnectionSettings


def run_on_ray(
    connection: ConnectionSettings,
    model: str | os.PathLike[str],
    options: RunOptions,
    cluster: RayOptions | None = None,
    *,
    device: str = "auto",
    ledger: Ledger | None = None,
    stop: threading.Event | None = None,
    listener: RunListener | None = None,
    command: tuple[str, ...] = (),
) -> RunSummary:
    """Pre-label the run's tasks on Ray actors (see the module docstring).

    ``model`` is a card name or path, loaded by every actor. ``cluster`` says where and how
    many actors (:class:`RayOptions`); ``device`` is ``auto`` (GPU actors when the cluster
    has GPUs), ``cpu`` or ``cuda``. The other arguments and the result are those of
    :func:`autolabel.pipeline.run`; the summary's ``workers`` hold per-actor statistics.
    Raises like a local run, plus :class:`ConfigError` when Ray is missing or no actor
    starts, and :class:`WorkerLostError` when every actor is lost.
    """
    cluster = cluster or RayOptions()
    options = _absolute(options)
    model_ref = _model_reference(model)
    with (
        # The work folder's one writer: taken before Ray starts, so a busy folder fails fast.
        lock_work_folder(options.work_dir, wait_s=options.lock_wait_s)
        if ledger is None
        else contextlib.nullcontext(),
        ray_session(cluster.address) as ray,
        get_project(
            connection.org_id, connection.project_id, connection.api_key, url=connection.url
        ) as project,
    ):
        plan = plan_actors(ray, cluster, device)
        prefix = f"autolabel-{uuid.uuid4().hex[:8]}"
        driver = RayDriver(ray, plan, cluster, options, model_ref, connection, prefix)
        own_ledger = ledger is None
        book = ledger
        try:
            key = driver.start()
            book = ledger if ledger is not None else Ledger(ledger_path(options.work_dir))
            driver.book = RunBook(project, key, options, book, stop, listener)
            return conduct(driver.book, driver, command)
        finally:
            driver.close()
            if own_ledger and book is not None:
                book.close()


def _absolute(options: RunOptions) -> RunOptions:
    """Options whose folders mean the same on every node of a local cluster."""
    return dataclasses.replace(
        options,
        work_dir=options.work_dir.absolute(),
        out_dir=options.results_dir.absolute(),
    )


def _model_reference(model: str | os.PathLike[str]) -> str:
    """A card name, or a card path made absolute so that actors find it."""
    if not isinstance(model, str | os.PathLike):
        raise ConfigError(
            "a Ray run loads the model in every actor: pass a model card name or path, "
            "not a loaded model"
        )
    path = Path(model)
    return str(path.absolute()) if path.exists() else str(model)


__all__ = ["RayOptions", "WorkerLostError", "run_on_ray"]

"""Submit: write one task's labels to RedBrick exactly once, never over a person's work.

The write protocol (with the ledger's, see :mod:`autolabel.ledger`):

0. the intent (``writing``) is committed before any of this: the run's
   :class:`~autolabel.pipeline.flow.WriteClaim` is issued only then;
1. upload the label files (:meth:`Project.upload_labels`): fresh storage keys, nothing is
   saved on the task yet, so a failed upload is simply done again;
2. check the claim -- the caller's ``record_intent`` (``WriteClaim.check``) refuses a
   write with no committed intent;
3. re-read the task, the last read before the write: still queued in the stage, still
   assigned to the key, and its latest labels are the ones seen at fetch time. Otherwise
   the task is skipped (:class:`~autolabel.errors.TaskSkipped`) saying who wrote it: another
   autolabel run (this key's labels bearing the run's :class:`~autolabel.pipeline.fetch.Stamp`), a
   script using the key, or a person;
4. send the one mutation that saves (:meth:`Project.commit_labels`);
5. a lost reply (timeout, reset, 5xx after the request went out) leaves the write *in
   doubt*. ``record_in_doubt`` commits that first; then :func:`settle` re-reads the task
   with backoff until it shows the write, or until the settle window has passed
   (:func:`settle_window`: longer than the client's read timeout plus a gateway's). Never
   one immediate re-read: a commit can land well after the client gave up. Only a write
   that did not land by then, on a task still ours and unchanged, is sent again (at most
   ``attempts`` sends).

Steps 3 to 5 run under the machine-wide write lock of the task
(:mod:`autolabel.pipeline.tasklock`): another autolabel run on this machine takes it only after
this run's write landed or was settled, so its re-read sees this run's stamp and skips.

What remains. RedBrick's saving mutation has no condition (no version or ``If-Match`` to
compare against), so the re-read of step 3 and the commit of step 4 cannot be one atomic
step: another writer whose write reaches the server between this re-read and the end of
this commit is not seen, and both writes land (the later one wins). That window is the
whole mutation, not a network round trip: the server's save takes seconds for a large
label file (measured here: two runs in different folders on one machine, with no lock
between them, wrote 6 of 8 tasks twice). The uploads are done before step
3 to keep this window to the mutation itself. Runs on one machine never meet in it:
runs sharing a work folder are one run at a time (:mod:`autolabel.pipeline.lock`), runs in
different folders (a watch and a run, the actors of a local Ray run) take turns under the
task's lock. Runs on different machines (the nodes of a Ray cluster among them: each
node's lock covers that node only) meet in it only if they write the same task within
that window: give such runs disjoint tasks (``--task-id``, ``--name``) when it matters. A write still in flight after the settle window (a server that commits
later than any gateway waits) is not seen either, on one machine or across machines.

:func:`write_landed` is the same test the pipeline uses at start-up to settle writes a
killed run left in doubt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from autolabel.errors import PlatformError, TaskSkipped, TransportError
from autolabel.pipeline.fetch import LabelsMarker, Stamp, writable_problem
from autolabel.pipeline.tasklock import task_lock_key, task_write_lock
from autolabel.redbrick import Project, Task
from autolabel.redbrick.labels import UploadedLabels

#: How long a gateway in front of RedBrick holds a request before it answers 5xx. The
#: SDK reads a 5xx after 26 s as the server's timeout (redbrick/common/client.py,
#: ``_check_status_msg``) and waits 30 s itself (redbrick/common/constants.py).
GATEWAY_TIMEOUT_S = 30.0
#: Added to the client's read timeout and the gateway's in :func:`settle_window`.
SETTLE_MARGIN_S = 30.0


def settle_window(read_timeout_s: float) -> float:
    """Seconds after a write was sent during which it may still land on RedBrick: the
    client's read timeout plus a gateway timeout plus a margin."""
    return read_timeout_s + GATEWAY_TIMEOUT_S + SETTLE_MARGIN_S


def default_settle_window(project: Project) -> float:
    """:func:`settle_window` for the read timeout ``project``'s client uses."""
    return settle_window(project.client.transport.timeout[1])


def write_landed(
    task: Task, *, user_id: str, stage_name: str, finalize: bool, before: LabelsMarker
) -> bool:
    """Whether ``task`` (read after a write) shows that this key's write went through.

    A write landed when the latest labels are this key's and are not the ones seen before
    the write; a submit also moved the task out of ``stage_name`` (or, in a consensus
    task, completed the key's own sub-task).
    """
    labels = task.labels_of(user_id)
    if labels is None or labels.created_by != user_id:
        return False
    if before.created_by == user_id and labels.created_at == before.created_at:
        return False
    if not finalize:
        return True
    part = task.part_of(user_id)  # a consensus submit completes the key's own sub-task
    return task.stage_name != stage_name or (part is not None and part.state == "COMPLETED")


def check_unchanged(
    project: Project,
    task_id: str,
    stage_name: str,
    before: LabelsMarker,
    stamp: Stamp | None = None,
) -> Task:
    """Re-read the task and raise :class:`TaskSkipped` unless it is still ours and untouched.

    The re-read asks for the task's state, not its images: no presigned item URLs."""
    fresh = project.get_task(task_id, presigned_items=False)
    ensure_unchanged(fresh, stage_name, project.current_user_id, before, stamp)
    return fresh


def ensure_unchanged(
    task: Task,
    stage_name: str,
    user_id: str,
    before: LabelsMarker,
    stamp: Stamp | None = None,
) -> None:
    """Raise :class:`TaskSkipped` unless ``task`` (just read) is still queued in
    ``stage_name`` for ``user_id`` with the labels seen at fetch time (``before``).

    The reason says who changed it: another autolabel run (labels of ``user_id`` bearing
    ``stamp``, saved since the fetch), the key used otherwise, the workflow, or a person.
    """
    now = LabelsMarker.of(task, user_id)
    if now != before and now.created_by == user_id:
        if stamp is not None and stamp.on(task):
            raise TaskSkipped(
                f"done by another autolabel run: this API key saved labels of "
                f"{stamp.describe()} at {now.created_at}, after this run fetched the task; "
                "it is written once"
            )
        raise TaskSkipped(
            f"this API key saved other labels at {now.created_at}, after autolabel fetched "
            "the task (another autolabel run with another model, or a script using the "
            "key); they are not overwritten"
        )
    problem = writable_problem(task, stage_name, user_id)
    if problem is not None:
        raise TaskSkipped(f"{problem} (changed after autolabel fetched it)")
    if now != before:
        raise TaskSkipped(
            f"a person saved labels after autolabel fetched the task ({now.created_by} at "
            f"{now.created_at}); autolabel never overwrites a person's work"
        )


def settle(
    project: Project,
    task_id: str,
    *,
    stage_name: str,
    finalize: bool,
    before: LabelsMarker,
    deadline: float,
    first_wait_s: float = 0.5,
    max_wait_s: float = 10.0,
) -> tuple[bool, Task | None]:
    """Settle a write in doubt: re-read ``task_id`` with backoff until it shows this key's
    write (:func:`write_landed`) or the wall-clock ``deadline`` (``time.time()``) has
    passed, as :func:`wait_until` does."""
    user = project.current_user_id
    return wait_until(
        project,
        task_id,
        lambda task: write_landed(
            task, user_id=user, stage_name=stage_name, finalize=finalize, before=before
        ),
        deadline=deadline,
        first_wait_s=first_wait_s,
        max_wait_s=max_wait_s,
    )


def wait_until(
    project: Project,
    task_id: str,
    landed: Callable[[Task], bool],
    *,
    deadline: float,
    first_wait_s: float = 0.5,
    max_wait_s: float = 10.0,
) -> tuple[bool, Task | None]:
    """Re-read ``task_id`` with backoff until ``landed(task)`` holds or the wall-clock
    ``deadline`` (``time.time()``) has passed; the last read is made at or after the
    deadline. Returns ``(landed, last task read)`` (read without presigned item URLs); the
    task is None when every re-read failed on the network (the write stays in doubt).
    Run-fatal errors propagate.
    """
    wait = first_wait_s
    task: Task | None = None
    while True:
        try:
            task = project.get_task(task_id, presigned_items=False)
        except TransportError:
            task = None
        if task is not None and landed(task):
            return True, task
        remaining = deadline - time.time()
        if remaining <= 0:
            return False, task
        time.sleep(min(wait, remaining))
        wait = min(wait * 2, max_wait_s)


def write_task(
    project: Project,
    task_id: str,
    stage_name: str,
    series: Sequence[Mapping[str, Any]],
    *,
    finalize: bool,
    before: LabelsMarker,
    record_intent: Callable[[], object],
    record_in_doubt: Callable[[str], object] | None = None,
    provenance: Mapping[str, str] | None = None,
    stamp: Stamp | None = None,
    settle_window_s: float | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> None:
    """Save (``finalize=False``) or submit one task's ``series`` following the module's protocol.

    ``record_intent`` checks (or commits) the ``writing`` intent (step 2); ``record_in_doubt(reason)``
    commits that a sent write's reply was lost, before it is settled (step 5).
    ``settle_window_s`` defaults to :func:`default_settle_window`.

    Raises :class:`TaskSkipped` when the task changed hands, another run or a person
    labelled it; :class:`~autolabel.errors.TaskWriteBusy` when another run on this machine
    kept the task's lock past :func:`lock_wait`;
    :class:`~autolabel.errors.TransportError` when no send could be confirmed
    (the last one settled as not landed, or could not be settled: the ledger keeps it in
    doubt), and other :class:`~autolabel.errors.PlatformError` as the server answers.
    """
    window = default_settle_window(project) if settle_window_s is None else settle_window_s
    uploaded = _upload(project, task_id, series, provenance, attempts, backoff_s)
    record_intent()
    with hold_task(project, task_id, window):  # steps 3-5: see autolabel.pipeline.tasklock
        check_unchanged(project, task_id, stage_name, before, stamp)
        for attempt in range(1, attempts + 1):
            try:
                project.commit_labels(uploaded, stage_name, finalize=finalize)
                return
            except TransportError as exc:
                sent_at = time.time()
                if record_in_doubt is not None:
                    record_in_doubt(f"send {attempt}: {exc}")
                landed, after = settle(
                    project,
                    task_id,
                    stage_name=stage_name,
                    finalize=finalize,
                    before=before,
                    deadline=sent_at + window,
                )
                if landed:
                    return
                if after is None or attempt == attempts:
                    raise
                ensure_unchanged(after, stage_name, project.current_user_id, before, stamp)


def lock_wait(project: Project, window_s: float) -> float:
    """How long a write waits for another run's hold of the task's lock: the holder's
    re-read and send (a read timeout each), its settle window, and a margin."""
    return 2 * project.client.transport.timeout[1] + window_s + SETTLE_MARGIN_S


def hold_task(project: Project, task_id: str, window_s: float) -> AbstractContextManager[None]:
    """The machine-wide write lock of ``task_id`` in ``project``
    (:func:`~autolabel.pipeline.tasklock.task_write_lock`), waited for :func:`lock_wait`:
    held around every write of a task (labels here, a review decision in
    :mod:`autolabel.reviews`) from its re-read to its settled answer."""
    endpoint = project.client.transport.endpoint
    key = task_lock_key(endpoint, project.org_id, project.project_id, task_id)
    return task_write_lock(key, task_id, wait_s=lock_wait(project, window_s))


def _upload(
    project: Project,
    task_id: str,
    series: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, str] | None,
    attempts: int,
    backoff_s: float,
) -> UploadedLabels:
    """Convert and upload the label files, trying again after a transient failure (nothing
    is saved on the task by these calls, so they are safe to repeat)."""
    for attempt in range(1, attempts + 1):
        try:
            return project.upload_labels(task_id, series, provenance=provenance)
        except PlatformError as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def is_transient(exc: PlatformError) -> bool:
    """A failure worth another try: transport trouble, or a refused storage transfer (an
    expired presigned URL is replaced by a fresh one on the next try)."""
    return isinstance(exc, TransportError) or exc.operation.startswith("storage")

"""Submit: write one task's labels to RedBrick exactly once, never over a person's work.

The write protocol (with the ledger's, see :mod:`autolabel.ledger`):

1. re-read the task: still queued in the stage, still assigned to the key, and its latest
   labels are the ones seen at fetch time (a person saved nothing since) -- otherwise the
   task is skipped with that reason (:class:`~autolabel.fetch.TaskSkipped`);
2. record the intent (``writing``) -- the caller's ``record_intent`` commits it;
3. send the write once. A mutation is never retried blindly: after a transport error (or a
   refused upload to a presigned URL) the task is re-read, and only if the write did not
   land (and the task is still ours, unchanged) is it sent again, up to ``attempts`` times.

:func:`write_landed` is the same test the pipeline uses at start-up to settle writes a
killed run left in doubt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autolabel.errors import PlatformError, TransportError
from autolabel.fetch import LabelsMarker, TaskSkipped, writable_problem
from autolabel.redbrick import Project, Task


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


def check_unchanged(project: Project, task_id: str, stage_name: str, before: LabelsMarker) -> Task:
    """Re-read the task and raise :class:`TaskSkipped` unless it is still ours and untouched."""
    fresh = project.get_task(task_id)
    ensure_unchanged(fresh, stage_name, project.current_user_id, before)
    return fresh


def ensure_unchanged(task: Task, stage_name: str, user_id: str, before: LabelsMarker) -> None:
    """Raise :class:`TaskSkipped` unless ``task`` (just read) is still queued in
    ``stage_name`` for ``user_id`` with the labels seen at fetch time (``before``)."""
    fresh = task
    problem = writable_problem(fresh, stage_name, user_id)
    if problem is not None:
        raise TaskSkipped(f"{problem} (changed after autolabel fetched it)")
    now = LabelsMarker.of(fresh, user_id)
    if now != before:
        raise TaskSkipped(
            f"a person saved labels after autolabel fetched the task ({now.created_by} at "
            f"{now.created_at}); autolabel never overwrites a person's work"
        )


def write_task(
    project: Project,
    task_id: str,
    stage_name: str,
    series: Sequence[Mapping[str, Any]],
    *,
    finalize: bool,
    before: LabelsMarker,
    record_intent: Callable[[], object],
    provenance: Mapping[str, str] | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> None:
    """Save (``finalize=False``) or submit one task's ``series`` following the module's protocol.

    Raises :class:`TaskSkipped` when the task changed hands or a person labelled it,
    :class:`~autolabel.errors.TransportError` when the write could not be confirmed after
    ``attempts`` sends (the ledger then keeps it in doubt for the next run to settle), and
    other :class:`~autolabel.errors.PlatformError` as the server answers.
    """
    check_unchanged(project, task_id, stage_name, before)
    record_intent()
    user = project.current_user_id
    for attempt in range(1, attempts + 1):
        try:
            project.save_labels(
                task_id, stage_name, series, finalize=finalize, provenance=provenance
            )
            return
        except PlatformError as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
            after = project.get_task(task_id)
            if write_landed(
                after, user_id=user, stage_name=stage_name, finalize=finalize, before=before
            ):
                return
            ensure_unchanged(after, stage_name, user, before)


def is_transient(exc: PlatformError) -> bool:
    """A failure worth another try: transport trouble, or a refused storage transfer (an
    expired presigned URL is replaced by a fresh one on the next try)."""
    return isinstance(exc, TransportError) or exc.operation.startswith("storage")

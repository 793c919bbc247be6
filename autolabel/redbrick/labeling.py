"""``project.labeling`` and ``project.review``: the SDK's label and review calls.

Call shapes follow RedBrick's "Programmatic Label & Review" docs, so a script ports by
changing its import. Differences from SDK 2.35.4, all on the side of not losing work:

* ``put_tasks`` never raises for one task's failure (server rule, upload, conversion): it
  returns the failed input tasks with an ``"error"`` string and carries on with the rest.
  Only run-fatal errors (:class:`~autolabel.errors.AuthError`) propagate.
* A stage name that is not a Label (resp. Review) stage raises ``ValueError`` instead of
  logging and returning ``None``.
* ``move_tasks_to_start`` tries every task, then raises the first failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from autolabel.errors import AuthError, AutolabelError
from autolabel.redbrick.labels import ConvertedTask, LabelWriter
from autolabel.redbrick.types import REDBRICK_STORAGE_ID, AssignedTask, TaskFilters

if TYPE_CHECKING:
    from autolabel.redbrick.project import Project

log = logging.getLogger(__name__)

Failed = dict[str, Any]


def _failure(task: Mapping[str, Any], error: BaseException | str) -> Failed:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {**task, "error": text}


class Labeling:
    """Label-stage calls (``project.labeling``), or Review-stage calls with ``review=True``."""

    def __init__(self, project: Project, *, review: bool = False) -> None:
        self.project = project
        self.review = review

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(project_id={self.project.project_id!r}, review={self.review})"
        )

    def _check_stage(self, stage_name: str) -> None:
        kind = "Review" if self.review else "Label"
        for stage in self.project.stages:
            if stage.stage_name == stage_name and (
                stage.is_review if self.review else stage.is_label
            ):
                return
        names = [
            s.stage_name
            for s in self.project.stages
            if (s.is_review if self.review else s.is_label)
        ]
        raise ValueError(
            f"{stage_name!r} is not a {kind} stage of this project; {kind} stages: {names}"
        )

    def put_tasks(
        self,
        stage_name: str,
        tasks: Sequence[Mapping[str, Any]],
        *,
        finalize: bool = True,
        existing_labels: bool = False,
        review_result: bool | None = None,
        review_comment: str | Mapping[str, Any] | None = None,
        label_storage_id: str | None = REDBRICK_STORAGE_ID,
        label_validate: bool = False,
        prune_segmentations: bool = False,
        rt_struct: bool = False,
        dicom_seg: bool = False,
        mhd: bool = False,
        concurrency: int = 10,
    ) -> list[Failed]:
        """Save or submit labels, or review, for tasks queued in ``stage_name`` for this key.

        Label stage (``project.labeling``):

        * ``{"taskId", "series": [{"segmentations": "<local .nii[.gz]>", "segmentMap": {...}}]}``
          uploads the label files and submits (``finalize=True``) or saves a draft;
        * ``existing_labels=True`` submits ``[{"taskId"}]`` with the labels they have.

        Review stage (``project.review``): ``review_result=True`` accepts, ``False`` rejects
        (any ``series`` is ignored, as on RedBrick), and a task with ``series`` and no
        ``review_result=False`` is accepted with correction (its labels replace the old).
        ``review_comment`` is a string or ``{"text", "pin": {"pointX", ...}}``.

        Returns the input tasks that failed, each with an ``"error"`` string; the others are
        done. Raises ``ValueError`` for a stage of the wrong kind and
        :class:`~autolabel.errors.AuthError` if the key is refused.

        The SDK's NIfTI options (``label_validate``, ``prune_segmentations``) and format
        conversions (``rt_struct``, ``dicom_seg``, ``mhd``) are accepted for compatibility but
        only as ``False``: this client uploads label files as they are, so check, prune or
        convert them first (:mod:`autolabel.imaging`); ``True`` raises ``ValueError``.
        """
        _refuse_options(
            label_validate=label_validate,
            prune_segmentations=prune_segmentations,
            rt_struct=rt_struct,
            dicom_seg=dicom_seg,
            mhd=mhd,
        )
        self._check_stage(stage_name)
        with_labels, plain, failed = self._split(tasks, existing_labels, review_result)
        storage_id = label_storage_id or self.project.label_storage()["storageId"]
        workers = max(1, min(concurrency, 10))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="put_tasks") as pool:
            failed += self._put_with_labels(
                pool, stage_name, with_labels, finalize, storage_id, workers
            )
            failed += _gather(
                pool,
                plain,
                lambda t: self._put_without_labels(stage_name, t, review_result, review_comment),
            )
        for entry in failed:
            log.warning(
                "put_tasks %s: task %s failed: %s", stage_name, entry.get("taskId"), entry["error"]
            )
        return failed

    def _split(
        self, tasks: Sequence[Mapping[str, Any]], existing_labels: bool, review_result: bool | None
    ) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[Failed]]:
        """``(with labels, without labels, failed)`` as the SDK classifies tasks (§4.1)."""
        with_labels: list[Mapping[str, Any]] = []
        plain: list[Mapping[str, Any]] = []
        failed: list[Failed] = []
        for task in tasks:
            if not isinstance(task.get("taskId"), str) or not task["taskId"]:
                failed.append(_failure(task, "the task has no taskId"))
            elif (review_result is False) if self.review else existing_labels:
                plain.append(task)  # a reject ignores any series, as RedBrick does
            elif isinstance(task.get("series"), list) or task.get("classification"):
                with_labels.append(task)
            elif self.review and review_result is True:
                plain.append(task)
            else:
                reason = "no review_result and no series" if self.review else "no series"
                failed.append(_failure(task, f"invalid task: {reason}"))
        return with_labels, plain, failed

    def _put_with_labels(
        self,
        pool: ThreadPoolExecutor,
        stage_name: str,
        tasks: list[Mapping[str, Any]],
        finalize: bool,
        storage_id: str,
        batch: int,
    ) -> list[Failed]:
        writer = LabelWriter(self.project.client, self.project.org_id, self.project.project_id)
        failed: list[Failed] = []
        for start in range(0, len(tasks), batch):
            chunk = tasks[start : start + batch]
            try:
                converted = writer.convert(chunk, storage_id)
            except AuthError:
                raise
            except AutolabelError as exc:
                failed += [_failure(t, exc) for t in chunk]
                continue

            def save(item: ConvertedTask) -> None:
                writer.save(item, stage_name=stage_name, finished=finalize)

            errors = {e["task_id"]: e["error"] for e in _gather(pool, converted, save)}
            failed += [
                _failure(source, errors[item.task_id])
                for item, source in zip(converted, chunk, strict=True)
                if item.task_id in errors
            ]
        return failed

    def _put_without_labels(
        self,
        stage_name: str,
        task: Mapping[str, Any],
        review_result: bool | None,
        comment: str | Mapping[str, Any] | None,
    ) -> None:
        p = self.project
        if not self.review:
            p.client.put_labeling_task(
                p.org_id, p.project_id, stage_name=stage_name, task_id=task["taskId"]
            )
            return
        text = comment.get("text") if isinstance(comment, Mapping) else comment
        pin = comment.get("pin") if isinstance(comment, Mapping) else None
        p.client.put_review_task(
            p.org_id,
            p.project_id,
            stage_name=stage_name,
            task_id=task["taskId"],
            accept=bool(review_result),
            comment=text,
            comment_pin=pin,
        )

    def assign_tasks(
        self,
        task_ids: Sequence[str],
        *,
        email: str | None = None,
        emails: Sequence[str] | None = None,
        refresh: bool = True,
        concurrency: int = 50,
    ) -> list[AssignedTask]:
        """Assign tasks (in their current stage) to ``email``, or ``emails``; neither unassigns.

        The API key itself is addressed by its user id: ``email=project.context.key_id``.
        Returns ``[{"taskId", "name", "stageName"}]`` of the affected tasks.
        """
        p = self.project
        assignees = [email] if email else (list(emails) if emails else None)
        size = max(1, min(concurrency, 50))
        out: list[AssignedTask] = []
        for start in range(0, len(task_ids), size):
            out += p.client.assign_tasks(
                p.org_id,
                p.project_id,
                task_ids[start : start + size],
                emails=assignees,
                refresh=refresh,
            )
        return out

    def move_tasks_to_start(self, task_ids: Sequence[str]) -> None:
        """Send Ground Truth tasks back to the first Label stage, unassigned.

        Every task is tried; then the first failure is raised (e.g. a
        :class:`~autolabel.errors.TaskStateError` for a task not in Ground Truth).
        """
        p = self.project
        with ThreadPoolExecutor(max_workers=10, thread_name_prefix="move_to_start") as pool:
            errors = _gather(
                pool,
                [{"taskId": t} for t in task_ids],
                lambda t: p.client.move_task_to_start(p.org_id, p.project_id, t["taskId"]),
                keep=True,
            )
        if errors:
            first = errors[0]["exception"]
            log.warning("move_tasks_to_start: %d of %d tasks failed", len(errors), len(task_ids))
            raise first

    def get_tasks(self, stage_name: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The tasks queued in ``stage_name`` and assigned to this API key (list entries)."""
        return list(
            self.project.export.list_tasks(
                search=TaskFilters.QUEUED,
                stage_name=stage_name,
                user_id=self.project.context.key_id,
                limit=limit,
            )
        )


def _refuse_options(**options: bool) -> None:
    unsupported = sorted(name for name, value in options.items() if value)
    if unsupported:
        raise ValueError(
            f"put_tasks({', '.join(f'{n}=True' for n in unsupported)}) is not supported: "
            "prepare one NIfTI label map per series before calling put_tasks"
        )


def _gather(
    pool: ThreadPoolExecutor,
    items: Sequence[Any],
    call: Callable[[Any], None],
    *,
    keep: bool = False,
) -> list[dict[str, Any]]:
    """Run ``call`` on every item; return per-item failures, raising run-fatal ones.

    For mapping items the failure is the item plus ``"error"``; for :class:`ConvertedTask`
    it is ``{"task_id", "error"}``. ``keep=True`` also keeps the exception object.
    """
    futures = [(item, pool.submit(call, item)) for item in items]
    failed: list[dict[str, Any]] = []
    fatal: BaseException | None = None
    for item, future in futures:
        exc = future.exception()
        if exc is None:
            continue
        if isinstance(exc, AuthError) or not isinstance(exc, (AutolabelError, OSError)):
            fatal = fatal or exc
            continue
        if isinstance(item, ConvertedTask):
            entry: dict[str, Any] = {
                "task_id": item.task_id,
                "error": f"{type(exc).__name__}: {exc}",
            }
        else:
            entry = _failure(item, exc)
        if keep:
            entry["exception"] = exc
        failed.append(entry)
    if fatal is not None:
        raise fatal
    return failed

"""The values that cross between the Ray driver and its actors: small, plain and picklable.

Nothing here holds an image or a label map: actors download and decode images, and write
label files, on their own node; the driver sees only what it records in the ledger (task
records, checksums, timings, volumes, file paths) and the ``series`` entries of a write
(a label-file path on the actor's node and a ``segmentMap``).

Exceptions raised in an actor travel as :class:`TaskError` (type name, message, stage),
not pickled: not every exception survives pickling (keyword-only constructors), and the
ledger only keeps the type name and message anyway. :meth:`TaskError.rebuild` gives the
driver an exception with the same type name and message for the ledger.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from autolabel import errors
from autolabel.errors import AutolabelError, TaskSkipped
from autolabel.ledger import ModelKey
from autolabel.pipeline.fetch import FetchReport
from autolabel.pipeline.steps import Converted


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo:
    """What an actor reports once its model is loaded and its connection is open."""

    name: str
    node: str
    pid: int
    device: str
    model: ModelKey


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskError:
    """An exception raised in an actor, as data; ``phase`` is fetch, infer or write."""

    phase: str
    type_name: str
    message: str
    skipped: bool = False

    @classmethod
    def of(cls, phase: str, exc: BaseException) -> TaskError:
        """The error ``exc`` raised during ``phase``."""
        return cls(
            phase=phase,
            type_name=type(exc).__name__,
            message=exc.reason if isinstance(exc, TaskSkipped) else str(exc),
            skipped=isinstance(exc, TaskSkipped),
        )

    def rebuild(self) -> BaseException:
        """An exception of the same type name and message (:class:`TaskSkipped` for a skip).

        autolabel's own errors and Python's built-in ones come back as their class; any
        other type as a stand-in class of the same name, so the ledger reads the same.
        """
        if self.skipped:
            return TaskSkipped(self.message)
        found = getattr(errors, self.type_name, None) or getattr(builtins, self.type_name, None)
        kind: type[Exception] = (
            found
            if isinstance(found, type) and issubclass(found, Exception)
            else type(self.type_name, (AutolabelError,), {})
        )
        exc = Exception.__new__(kind)
        Exception.__init__(exc, self.message)
        return exc


@dataclass(kw_only=True)
class Prepared:
    """How far an actor got with one task before the write, and what to write.

    ``fetch`` is ``None`` when the fetch failed, ``infer_s`` when inference did not finish,
    ``converted`` when the conversion did not (its ``entries`` are the ``series`` entries to
    write, empty: nothing to write); ``error`` is set when a step failed or the task must
    be skipped.
    """

    worker: str
    fetch: FetchReport | None = None
    infer_s: float | None = None
    device_events: list[dict[str, Any]] = field(default_factory=list)
    converted: Converted | None = None
    error: TaskError | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Sent:
    """A write that went through, how long it took, and what went wrong after it (see
    :class:`~autolabel.pipeline.steps.Written`)."""

    seconds: float
    note: str = ""

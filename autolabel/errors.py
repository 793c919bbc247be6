"""The one error tree of autolabel.

Every error the package raises on purpose derives from :class:`AutolabelError`::

    AutolabelError                 root
    ├── ConfigError                bad settings, arguments, model card      -> run-fatal, exit 2
    │   └── WorkFolderBusy         another run holds the work folder's lock -> run-fatal, exit 2
    ├── TaskWriteBusy              another run on this machine kept a task's write lock (per task)
    ├── PlatformError              a RedBrick call failed (operation, status)
    │   ├── TransportError         connect/read timeout, 5xx, 429 after retries (retryable)
    │   ├── AuthError              401/403 or an unknown API key            -> run-fatal, exit 3
    │   ├── NotFoundError          project, task or storage object missing
    │   ├── GraphQLError           HTTP 200 with ``errors``; keeps the messages
    │   └── TaskStateError         task not in the stage / not assigned / already done (per task)
    ├── ImageError                 download, parse or geometry of a series (per task)
    ├── ModelError                 model load failure, device, out of memory
    │   ├── BadModelOutputError    a model broke its contract (spec or output)
    │   └── ModelTimeoutError      a predict call ran past its time limit (per task)
    ├── ConversionError            label map / affine / taxonomy mismatch (per task)
    ├── LedgerError                the ledger cannot be read or written     -> run-fatal
    ├── TaskSkipped                the task must be left alone (not a failure; per task)
    └── WorkerLostError            a Ray actor holding the task died twice (per task)

:func:`classify` is the one rule that turns an exception met while working on a task into
that task's outcome: ``skipped`` (:class:`TaskSkipped`, and a server's
:class:`TaskStateError`: the task moved on, as the run's own guard would say), ``failed``
(anything else), or raised again when it is run-fatal (:data:`RUN_FATAL`). The run and
review both use it.

Rules: caller mistakes on public functions raise ``ValueError``/``TypeError``; errors of
third-party libraries are translated at the module that imports them (``raise ... from exc``);
messages say what was found and what to do, and never contain an API key.
"""

from __future__ import annotations


class AutolabelError(Exception):
    """Root of every error autolabel raises on purpose."""


class ConfigError(AutolabelError):
    """Settings, arguments or a model card are wrong; the run cannot start."""


class WorkFolderBusy(ConfigError):
    """Another autolabel process holds the lock of the work folder (see
    :mod:`autolabel.pipeline.lock`); the message names the holder and the way out."""


class TaskWriteBusy(AutolabelError):
    """Another autolabel run on this machine kept the task's write lock (see
    :mod:`autolabel.pipeline.tasklock`) past the wait; the task fails, the run goes on."""


class PlatformError(AutolabelError):
    """A call to RedBrick (or the emulator) failed.

    ``operation`` is the GraphQL operation name or the storage verb, ``status`` the HTTP
    status when there was one.
    """

    def __init__(self, message: str, *, operation: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.status = status


class TransportError(PlatformError):
    """The request did not get a usable answer: connection, timeout, 5xx or 429."""


class AuthError(PlatformError):
    """The API key was refused (HTTP 401/403, a fast 5xx to the first call, or a message
    saying so on a project-level call)."""


class NotFoundError(PlatformError):
    """The project, task or stored object does not exist."""


class GraphQLError(PlatformError):
    """The server answered with GraphQL ``errors``; ``messages`` keeps each of them."""

    def __init__(
        self, messages: list[str], *, operation: str = "", status: int | None = None
    ) -> None:
        super().__init__("; ".join(messages), operation=operation, status=status)
        self.messages = messages


class TaskStateError(PlatformError):
    """The task is not in a state that allows the write (stage, assignee, newer labels)."""


class ImageError(AutolabelError):
    """A series could not be read or its geometry is unusable."""


class ModelError(AutolabelError):
    """A model could not be loaded or run."""


class BadModelOutputError(ModelError):
    """A model broke its contract: bad spec, or an output of the wrong dtype, shape or values."""


class ModelTimeoutError(ModelError):
    """A model's ``predict`` ran past its time limit; the task fails, the run goes on."""


class ConversionError(AutolabelError):
    """A label map cannot be turned into a RedBrick series entry."""


class LedgerError(AutolabelError):
    """The ledger cannot be read or written."""


class TaskSkipped(AutolabelError):
    """The task must not be written by this run; ``reason`` says why (it is not a failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerLostError(AutolabelError):
    """The Ray actor working on a task died (killed, out of memory, node lost), twice."""


#: Errors that stop a whole run (or review) at once: the key, the settings, the ledger.
RUN_FATAL: tuple[type[AutolabelError], ...] = (AuthError, ConfigError, LedgerError)


def classify(exc: BaseException) -> tuple[str, str]:
    """The outcome of a task that raised ``exc``: ``(status, reason)``.

    ``status`` is ``"skipped"`` for :class:`TaskSkipped` and :class:`TaskStateError` (the
    server refused the write because the task moved on: the same verdict the run's guard
    gives when it sees it first), else ``"failed"``. The reason is the error's message;
    an error from outside autolabel's tree is prefixed with its type name. Run-fatal
    errors (:data:`RUN_FATAL`) are raised again.
    """
    if isinstance(exc, RUN_FATAL):
        raise exc
    if isinstance(exc, TaskSkipped):
        return "skipped", exc.reason
    if isinstance(exc, TaskStateError):
        return "skipped", str(exc)
    if isinstance(exc, AutolabelError):
        return "failed", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


__all__ = [
    "RUN_FATAL",
    "AuthError",
    "AutolabelError",
    "BadModelOutputError",
    "ConfigError",
    "ConversionError",
    "GraphQLError",
    "ImageError",
    "LedgerError",
    "ModelError",
    "ModelTimeoutError",
    "NotFoundError",
    "PlatformError",
    "TaskSkipped",
    "TaskStateError",
    "TaskWriteBusy",
    "TransportError",
    "WorkFolderBusy",
    "WorkerLostError",
]

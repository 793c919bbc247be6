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
    └── LedgerError                the ledger cannot be read or written     -> run-fatal

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
    :mod:`autolabel.worklock`); the message names the holder and the way out."""


class TaskWriteBusy(AutolabelError):
    """Another autolabel run on this machine kept the task's write lock (see
    :mod:`autolabel.tasklock`) past the wait; the task fails, the run goes on."""


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


__all__ = [
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
    "TaskStateError",
    "TaskWriteBusy",
    "TransportError",
    "WorkFolderBusy",
]

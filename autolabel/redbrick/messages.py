"""Which error class a GraphQL ``errors[].message`` stands for (redbrick-protocol.md §5.2).

The real server's texts are closed. The patterns cover the documented rules as the emulator
words them and plausible wordings of the real server; anything unrecognised stays a plain
:class:`~autolabel.errors.GraphQLError`, which keeps every message.
"""

from __future__ import annotations

import re

from autolabel.errors import AuthError, GraphQLError, NotFoundError, PlatformError, TaskStateError

_TASK_STATE = re.compile(
    "|".join(
        (
            r"not assigned",
            r"assigned to (?:another|someone)",
            r"not (?:queued )?in (?:the )?(?:\w+ )?stage",
            r"wrong stage",
            r"not in ground truth",
            r"only ground truth",
            r"only tasks in",
            r"already (?:submitted|completed|reviewed)",
            r"is not an? (?:label|review)(?:ing)? stage",
            r"cannot be (?:moved|submitted|assigned)",
        )
    ),
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"not found|does not exist|doesn't exist|no such|unknown (?:task|project)", re.I
)
_AUTH = re.compile(
    r"unauthori[sz]ed|unauthenticated|not authenticated|invalid api ?key|forbidden", re.I
)
#: Operations on one task. A refusal inside their answer (HTTP 200 with ``errors``) is about
#: that task (a permission on it, a stage the key may not write), not about the key: RedBrick
#: refuses a bad key at the HTTP level (redbrick/common/client.py ``_check_status_msg``).
TASK_OPERATIONS = frozenset(
    {
        "taskSDK",
        "presignItemsSDK",
        "presignUploadsSDK",
        "validateAndConvertToImportFormatSDK",
        "putTaskAndLabelsSDK",
        "putLabelingTaskSDK",
        "putReviewTaskSDK",
        "moveTaskToStartSDK",
        "assignTasksMultipleUsersSDK",
    }
)


def error_from_messages(
    messages: list[str], *, operation: str, status: int | None
) -> PlatformError:
    """Map the ``errors[].message`` of a GraphQL answer to the narrowest error class.

    Task-rule violations (not assigned to the key, not queued in the stage, not in Ground
    Truth, already done) → :class:`TaskStateError`; a missing object → :class:`NotFoundError`;
    a refused key on a project-level call → :class:`AuthError` (run-fatal); anything else,
    an "Unauthorized"/"Forbidden" on a :data:`TASK_OPERATIONS` call included (a failure of
    that task only) → :class:`GraphQLError`, which keeps every message in ``messages``.
    """
    text = "; ".join(messages)
    refused = any(_AUTH.search(m) for m in messages)
    if refused and operation in TASK_OPERATIONS:
        return GraphQLError(
            [f"{operation}: RedBrick refused this on the task (is the key allowed here?): {m}"
             for m in messages],
            operation=operation,
            status=status,
        )  # fmt: skip
    if refused:
        return AuthError(
            f"{operation}: RedBrick refused the API key: {text}", operation=operation, status=status
        )
    if any(_TASK_STATE.search(m) for m in messages):
        return TaskStateError(f"{operation}: {text}", operation=operation, status=status)
    if any(_NOT_FOUND.search(m) for m in messages):
        return NotFoundError(f"{operation}: {text}", operation=operation, status=status)
    return GraphQLError([f"{operation}: {m}" for m in messages], operation=operation, status=status)

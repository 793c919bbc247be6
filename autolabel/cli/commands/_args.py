"""Argument types shared by the commands: each refuses a bad value as a usage error (exit 2)
that names the flag, the value and what is expected, before anything else happens."""

from __future__ import annotations

import argparse
import uuid


def task_id(text: str) -> str:
    """A RedBrick task id: a UUID (the API's ``taskId: UUID!``), returned in canonical form."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a task id: RedBrick task ids are UUIDs like "
            "1b4e28ba-2fa1-41d2-883f-0016d3cca427 (copy it from the task's page or "
            "`autolabel status`)"
        ) from None


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 0..65535 (0: a free one)")
    return value

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


def add_ledger_work(parser: argparse.ArgumentParser) -> None:
    """Add ``--work DIR``, the work folder whose ledger a command reads."""
    from autolabel.settings import DEFAULT_WORK_DIR

    parser.add_argument(
        "--work",
        default=DEFAULT_WORK_DIR,
        metavar="DIR",
        help=f"work folder holding the ledger (default: ./{DEFAULT_WORK_DIR})",
    )


def require_ledger(work: str) -> None:
    """Refuse (:class:`~autolabel.errors.ConfigError`, exit 2) a work folder with no ledger."""
    from autolabel.errors import ConfigError
    from autolabel.ledger import ledger_path

    if not ledger_path(work).is_file():
        raise ConfigError(
            f"no ledger in {work}: nothing has run with this work folder "
            "(give the folder of `autolabel run` with --work)"
        )


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    doc: str | None,
) -> argparse.ArgumentParser:
    """Add sub-command ``name``: ``summary`` in the command list, the module's ``doc`` (as
    written, line breaks kept) in its ``--help``."""
    return subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )

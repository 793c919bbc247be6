"""``autolabel undo``: revert what a run (or a model version) wrote, where no person has
touched the task since.

``--run RUN_ID`` (from ``autolabel status``) or ``--model NAME@VERSION``, each repeatable,
choose the writes; the ledger of ``--work`` says which tasks they were. A task still
queued for the API key with the run's labels gets back what it had before the run: no
labels (an empty draft). Tasks a person saved labels on since are kept and listed; a
submitted task that has left the stage is listed with what a reviewer must do to send it
back. ``--dry-run`` prints the plan and changes nothing. The undo is recorded in the
ledger (``undoing`` / ``undone``), so running it again changes nothing more.
Exit code 0, or 1 when a task's revert failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autolabel.cli.commands._args import add_command, add_ledger_work, require_ledger
from autolabel.cli.commands._connect import add_connection_arguments, connect

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "revert what a run or model version wrote, where no person has touched it"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``undo`` sub-command."""
    parser = add_command(subparsers, "undo", SUMMARY, __doc__)
    add_connection_arguments(parser)
    parser.add_argument(
        "--run", action="append", default=[], metavar="RUN_ID", help="a run to undo"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME@VERSION",
        help="undo every run of this model version (e.g. ct-threshold@1.0)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_ledger_work(parser)
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.set_defaults(handler=undo_command)


def undo_command(args: argparse.Namespace) -> int:
    """Undo (or plan it), print one line per task (or JSON); 1 if a task failed."""
    from autolabel.pipeline.undo import parse_model, undo

    for text in args.model:
        parse_model(text)  # a malformed NAME@VERSION is a usage error before connecting
    require_ledger(args.work)
    project = connect(args)
    with project:
        summary = undo(
            project,
            Path(args.work),
            run_ids=tuple(args.run),
            models=tuple(args.model),
            dry_run=args.dry_run,
            command=tuple(sys.argv),
        )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return summary.exit_code
    for item in summary.items:
        extra = " · ".join(x for x in (item.reason, item.todo and f"to do: {item.todo}") if x)
        print(
            f"{item.status:<14} {item.task_name or item.task_id}" + (f"  ({extra})" * bool(extra))
        )
    counts = summary.to_dict()["counts"]
    line = "; ".join(f"{k} {v}" for k, v in counts.items()) or "nothing to undo"
    print(("plan (dry run, nothing changed): " if summary.dry_run else "") + line)
    return summary.exit_code

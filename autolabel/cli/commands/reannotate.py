"""``autolabel reannotate``: send Ground Truth tasks back to Label.

``--task-id ...`` sends those tasks back (``move_tasks_to_start``). ``--audit --max-dice
0.7`` scores every Ground Truth task against the model and sends back those with any
category below the threshold; add ``--dry-run`` to only list them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolabel.cli.commands._args import add_command, task_id
from autolabel.cli.commands._connect import add_connection_arguments, connect
from autolabel.errors import ConfigError

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "send Ground Truth tasks back to Label (by id, or where the model disagrees)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reannotate`` sub-command."""
    parser = add_command(subparsers, "reannotate", SUMMARY, __doc__)
    add_connection_arguments(parser)
    parser.add_argument("--task-id", action="append", default=[], metavar="ID", type=task_id)
    parser.add_argument("--audit", action="store_true", help="let the model find disagreements")
    parser.add_argument("--max-dice", type=float, default=0.7, help="--audit threshold (0.7)")
    parser.add_argument("--dry-run", action="store_true", help="list, do not send back")
    parser.add_argument("--limit", type=int, help="audit at most N tasks")
    parser.add_argument("--model", help="model card for --audit (default: ct-threshold)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", default="autolabel-work", help="scratch folder")
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON")
    parser.set_defaults(handler=reannotate_command)


def reannotate_command(args: argparse.Namespace) -> int:
    """Send back or audit; print the decisions; exit 1 if a task failed."""
    from autolabel.cli.commands.review import print_decisions
    from autolabel.reviews import audit_ground_truth, send_back

    if not args.audit and not args.task_id:
        raise ConfigError("give --task-id ID (repeatable) or --audit")
    project = connect(args)
    with project:
        if args.audit:
            from autolabel.inference import load_model
            from autolabel.pipeline.options import DEFAULT_MODEL

            model = load_model(args.model or DEFAULT_MODEL, device=args.device)
            summary = audit_ground_truth(
                project,
                model,
                max_dice=args.max_dice,
                dry_run=args.dry_run,
                task_ids=tuple(args.task_id),
                limit=args.limit,
                work_dir=Path(args.work),
            )
        elif args.dry_run:
            raise ConfigError("--dry-run applies to --audit; without it, nothing would happen")
        else:
            summary = send_back(project, tuple(args.task_id))
    print_decisions(summary, as_json=args.json)
    return summary.exit_code

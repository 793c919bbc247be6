"""``autolabel review``: accept or reject the tasks queued for the API key in a review stage.

``--accept`` / ``--reject --comment TEXT`` decide for the given tasks (``--task-id``), or
for every assigned one only with an explicit ``--all``; ``--auto --min-dice 0.8`` lets the model decide (accept when every
category's Dice reaches the threshold, else reject with the scores in the comment);
``--correct`` accepts with the model's labels.
"""

from __future__ import annotations

import argparse
import json

from autolabel.cli.commands._args import add_command, task_id
from autolabel.cli.commands._connect import add_connection_arguments, connect, require_stage
from autolabel.errors import ConfigError

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "accept / reject tasks in a review stage, by hand or by agreement with a model"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``review`` sub-command."""
    parser = add_command(subparsers, "review", SUMMARY, __doc__)
    add_connection_arguments(parser)
    parser.add_argument("--stage", default="Review_1", help="review stage (default: Review_1)")
    parser.add_argument("--task-id", action="append", default=[], metavar="ID", type=task_id)
    parser.add_argument(
        "--all",
        action="store_true",
        help="--accept / --reject every task assigned to the key in the stage",
    )
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--accept", action="store_const", dest="decision", const="accept")
    how.add_argument("--reject", action="store_const", dest="decision", const="reject")
    how.add_argument(
        "--auto", action="store_const", dest="decision", const="auto", help="model decides"
    )
    how.add_argument(
        "--correct",
        action="store_const",
        dest="decision",
        const="correct",
        help="accept with the model's labels",
    )
    parser.add_argument("--min-dice", type=float, default=0.8, help="--auto threshold (0.8)")
    parser.add_argument("--comment", help="review comment")
    parser.add_argument("--model", help="model card for --auto / --correct (ct-threshold)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--work", help="scratch folder (default: ./autolabel-work)")
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON")
    parser.set_defaults(handler=review_command)


def review_command(args: argparse.Namespace) -> int:
    """Review, print one line per task (or JSON); exit 1 if a task failed."""
    from autolabel.pipeline.options import resolve_options
    from autolabel.reviews import review_tasks

    check_decision(args)
    # Model, device and work folder resolve as for a run (flags over [run] over defaults).
    options = resolve_options(
        {"model": args.model, "device": args.device, "work_dir": args.work},
        config_path=args.config,
    )
    project = connect(args)
    with project:
        require_stage(project, args.stage, review=True)
        model = None
        if args.decision in ("auto", "correct"):
            from autolabel.inference import load_model

            model = load_model(options.model, device=options.device)
        summary = review_tasks(
            project,
            model,
            args.stage,
            decision=args.decision,
            min_dice=args.min_dice,
            comment=args.comment,
            task_ids=tuple(args.task_id),
            work_dir=options.work_dir,
        )
    print_decisions(summary, as_json=args.json)
    return summary.exit_code


def check_decision(args: argparse.Namespace) -> None:
    """A decision by hand names its tasks (or says ``--all``); a rejection says why."""
    if args.decision in ("accept", "reject") and not args.task_id and not args.all:
        raise ConfigError(
            f"--{args.decision} decides without looking at the labels: name the tasks with "
            "--task-id ID (repeatable), or add --all for every task assigned to the key in "
            f"{args.stage}"
        )
    if args.all and args.task_id:
        raise ConfigError("give --task-id or --all, not both")
    if args.decision == "reject" and not (args.comment or "").strip():
        raise ConfigError(
            "--reject needs --comment TEXT: the reason the annotator reads when the task "
            "comes back to Label"
        )


def print_decisions(summary: object, *, as_json: bool) -> None:
    """One line per task, or the summary as JSON."""
    from autolabel.reviews import ReviewSummary

    assert isinstance(summary, ReviewSummary)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    for d in summary.decisions:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.dice.items()))
        extra = " · ".join(x for x in (scores, d.comment or d.reason) if x)
        print(f"{d.status:<9} {d.task_name or d.task_id}" + (f"  ({extra})" if extra else ""))
    counts = summary.to_dict()["counts"]
    print("; ".join(f"{k} {v}" for k, v in counts.items()) or "no tasks")

"""``autolabel watch``: pre-label new uploads as they are assigned to the API key.

Polls every ``--interval`` seconds and runs the pipeline on the tasks that appeared (the
ledger skips those already done), with the model loaded once and kept warm. SIGINT or
SIGTERM stops it cleanly after the tasks in hand. Takes the same flags as ``run``; it
holds the work folder's lock while it watches, so ``run`` on the same ``--work`` waits
(``--wait-lock``) or exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import TYPE_CHECKING

from autolabel.cli.commands._args import add_command
from autolabel.cli.commands._connect import add_connection_arguments, connect, require_stage
from autolabel.cli.commands.run import add_run_arguments, run_options, stop_on_signals
from autolabel.settings import ensure_writable_folder

if TYPE_CHECKING:  # heavy imports stay inside the handler at run time
    from autolabel.inference.spec import SegmentationModel
    from autolabel.ledger import Ledger
    from autolabel.pipeline.options import RunOptions
    from autolabel.redbrick import Project


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``watch`` sub-command."""
    parser = add_command(
        subparsers, "watch", "keep pre-labelling new tasks as they are assigned", __doc__
    )
    add_connection_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    parser.add_argument("--max-polls", type=int, help="stop after N polls (default: never)")
    parser.set_defaults(handler=watch_command)


def watch_command(args: argparse.Namespace) -> int:
    """Poll and run until stopped; exit 1 if any task failed along the way."""
    from autolabel.inference import load_model
    from autolabel.ledger import Ledger, ledger_path
    from autolabel.pipeline.lock import lock_work_folder

    options = run_options(args)
    ensure_writable_folder(options.results_dir, "--out")
    # The work folder's lock is held for the whole watch (a run on the folder waits or
    # exits 2), with one ledger connection for every poll.
    with lock_work_folder(options.work_dir, wait_s=options.lock_wait_s):
        project = connect(args)
        ledger = Ledger(ledger_path(options.work_dir))
        with project, ledger, stop_on_signals() as stop:
            require_stage(project, options.stage)
            model = load_model(options.model, device=options.device)
            print(
                f"autolabel: watching stage {options.stage!r} every {args.interval:g} s "
                "(Ctrl-C to stop)",
                file=sys.stderr,
            )
            polls, failed = _poll(args, project, model, options, ledger, stop)
    print(f"autolabel: watch stopped after {polls} poll(s)", file=sys.stderr)
    return 1 if failed else 0


def _poll(
    args: argparse.Namespace,
    project: Project,
    model: SegmentationModel,
    options: RunOptions,
    ledger: Ledger,
    stop: threading.Event,
) -> tuple[int, int]:
    """Run every ``--interval`` until stopped (or ``--max-polls``); print a line per poll
    that did something. Returns ``(polls, tasks failed)``."""
    from autolabel.pipeline import run

    failed = 0
    polls = 0
    while not stop.is_set():
        summary = run(project, model, options, ledger=ledger, stop=stop, command=tuple(sys.argv))
        polls += 1
        failed += len(summary.failed)
        if summary.outcomes or args.json:
            line = {
                "poll": polls,
                "done": len(summary.done),
                "skipped": len(summary.skipped),
                "failed": len(summary.failed),
                "tasks": [o.to_dict() for o in summary.outcomes],
            }
            if args.json:
                print(json.dumps(line), flush=True)
            else:
                print(
                    f"poll {polls}: done {line['done']}, skipped {line['skipped']}, "
                    f"failed {line['failed']}",
                    flush=True,
                )
        if args.max_polls is not None and polls >= args.max_polls:
            break
        stop.wait(args.interval)
    return polls, failed

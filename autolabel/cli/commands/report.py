"""``autolabel report``: one self-contained HTML file of what a run did.

Reads the ledger of the work folder (not RedBrick) and writes, per task, the preview of
the labels on three planes, the volume of each category in ml, the seconds of each stage
and the outcome (draft saved, submitted, dry run, skipped, failed -- with reasons), with
the model's name, version and weights hash and the run's totals. Images are embedded:
the file can be mailed or attached to a ticket as it is. By default the latest run;
``--run`` picks one, ``--runs N`` the N newest (0: all).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autolabel.cli.commands._args import add_command, add_ledger_work, require_ledger
from autolabel.errors import ConfigError
from autolabel.settings import ensure_writable_folder

#: How every HTML file starts that ``--out`` may replace (autolabel's reports do).
_HTML_START = b"<!doctype html"

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "write an HTML report of a run (previews, volumes, timings, outcomes)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` sub-command."""
    parser = add_command(subparsers, "report", SUMMARY, __doc__)
    add_ledger_work(parser)
    parser.add_argument("--run", metavar="RUN_ID", help="report this run (default: the latest)")
    parser.add_argument(
        "--runs", type=int, default=1, metavar="N", help="report the N newest runs (0: all)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="HTML file to write (default: WORK/report.html)"
    )
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print its path; usage errors for a missing ledger or run."""
    from autolabel.report import write_report

    require_ledger(args.work)
    if args.runs < 0:
        raise ConfigError("--runs must be 0 (all) or more")
    target = args.out if args.out is not None else Path(args.work) / "report.html"
    check_report_target(target)
    try:
        path = write_report(args.work, target, args.run, runs=args.runs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"report: {path}")
    return 0


def check_report_target(target: Path) -> None:
    """Refuse (``ConfigError``, exit 2) an ``--out`` that is a folder, that would replace a
    file which is not an HTML page (the ledger, an image), or whose folder is not writable."""
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; give the HTML file to write")
    if target.exists():
        with target.open("rb") as stream:
            start = stream.read(len(_HTML_START)).lower()
        if start != _HTML_START:
            raise ConfigError(
                f"--out {target} exists and is not an HTML report: refusing to overwrite it; "
                "give a new file name with --out"
            )
    ensure_writable_folder(target.parent, "--out")

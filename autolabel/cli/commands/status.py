"""``autolabel status``: what the ledger of a work folder says.

Shows, over all runs (or one, with ``--run``): the number of (task, model) pairs per latest state, the failures with
their reasons, tasks whose write is in doubt (a run stopped between the intent and the
answer), step timings, the confidence of each written task per category (models that give
probabilities; ``null`` for those that give none) with its route, and the last run.
``--json`` prints the same as one JSON object for scripts. Exit code 0, or 1 when the latest state of some task is ``failed``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from autolabel.cli.commands._args import add_ledger_work, require_ledger
from autolabel.errors import ConfigError
from autolabel.ledger import Ledger, LedgerSummary, RunInfo, TaskEvent, ledger_path
from autolabel.settings.secrets import redact_argv


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` sub-command."""
    parser = subparsers.add_parser(
        "status",
        help="summarise the ledger: counts per state, failures, last run",
        description=__doc__.splitlines()[2] if __doc__ else None,
    )
    add_ledger_work(parser)
    parser.add_argument("--run", metavar="RUN_ID", help="summarise one run instead of all")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Print the summary of the ledger in ``args.work``; 1 if some task's last state failed."""
    require_ledger(args.work)
    with Ledger(ledger_path(args.work), create=False) as ledger:
        if args.run and not any(r.run_id == args.run for r in ledger.runs()):
            raise ConfigError(f"no run {args.run!r} in the ledger of {args.work}")
        summary = ledger.summary(args.run)
        in_doubt = ledger.in_doubt_writes()
        latest = ledger.latest_events(args.run)
    report = status_report(summary, in_doubt, latest)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_tables(report)
    return 1 if summary.failures else 0


def status_report(
    summary: LedgerSummary, in_doubt: list[TaskEvent], latest: Sequence[TaskEvent] = ()
) -> dict[str, Any]:
    """The ``--json`` document: plain JSON types only, times in ISO 8601 UTC. ``latest``
    (the latest event of each task) gives the ``confidence`` list: each written or
    dry-run task's confidence per category, route and priority."""
    last = summary.runs[0] if summary.runs else None
    return {
        "confidence": [_confidence_json(e) for e in latest if "confidence" in e.detail],
        "total": summary.total,
        "counts": dict(sorted(summary.counts.items())),
        "failures": [_event_json(e) for e in summary.failures],
        "in_doubt_writes": [_event_json(e) for e in in_doubt],
        "timings": {
            state: {
                "count": t.count,
                "total_seconds": t.total_seconds,
                "mean_seconds": t.mean_seconds,
                "max_seconds": t.max_seconds,
            }
            for state, t in sorted(summary.timings.items())
        },
        "runs": len(summary.runs),
        "last_run": _run_json(last) if last else None,
    }


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _event_json(event: TaskEvent) -> dict[str, Any]:
    return {
        "task_id": event.task_id,
        "task_name": event.task_name,
        "model": {"name": event.model.name, "version": event.model.version,
                  "weights_hash": event.model.weights_hash},
        "mode": event.mode,
        "state": event.state.value,
        "at": _iso(event.at),
        "run_id": event.run_id,
        "error_type": event.error_type,
        "error_message": event.error_message,
    }  # fmt: skip


def _confidence_json(event: TaskEvent) -> dict[str, Any]:
    detail = event.detail
    return {
        "task_id": event.task_id,
        "task_name": event.task_name,
        "state": event.state.value,
        "model": f"{event.model.name} {event.model.version}",
        "confidence": detail.get("confidence"),  # null: the model gives no probabilities
        "route": detail.get("route", ""),
        "route_reason": detail.get("route_reason", ""),
        "dropped": detail.get("dropped", []),
        "priority": detail.get("priority"),
    }


def _run_json(run: RunInfo) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "status": run.status,
        "mode": run.mode,
        "command": redact_argv(run.command),
        "model": str(run.model) if run.model else None,
    }


def _print_tables(report: dict[str, Any]) -> None:
    from rich.table import Table

    from autolabel.cli.progress import make_console

    console = make_console()
    counts = Table(title=f"Tasks by latest state ({report['total']} task/model pairs)")
    counts.add_column("state")
    counts.add_column("tasks", justify="right")
    for state, count in report["counts"].items():
        counts.add_row(state, str(count))
    console.print(counts)
    for key, title in (("failures", "Failed tasks"), ("in_doubt_writes", "Writes in doubt")):
        if report[key]:
            table = Table(title=title)
            for column in ("task id", "name", "model", "at", "error"):
                table.add_column(column, overflow="fold", no_wrap=column in ("task id", "at"))
            for e in report[key]:
                error = f"{e['error_type']}: {e['error_message']}" if e["error_type"] else ""
                model = f"{e['model']['name']} {e['model']['version']}"
                table.add_row(e["task_id"], e["task_name"], model, e["at"], error)
            console.print(table)
    if report["confidence"]:
        table = Table(title="Confidence per category (mean max-softmax in the predicted region)")
        for column in ("name", "state", "route", "confidence", "priority"):
            table.add_column(column, overflow="fold")
        for e in report["confidence"]:
            scores = e["confidence"]
            text = (
                "no probabilities"
                if scores is None
                else " · ".join(f"{c} {v['confidence']:.3f}" for c, v in scores.items())
            )
            priority = "" if e["priority"] is None else f"{e['priority']:.3f}"
            table.add_row(e["task_name"] or e["task_id"], e["state"], e["route"], text, priority)
        console.print(table)
    if report["timings"]:
        timings = Table(title="Step timings (seconds)")
        for column in ("state", "count", "mean", "max", "total"):
            timings.add_column(column, justify="right" if column != "state" else "left")
        for state, t in report["timings"].items():
            timings.add_row(state, str(t["count"]), f"{t['mean_seconds']:.2f}",
                            f"{t['max_seconds']:.2f}", f"{t['total_seconds']:.1f}")  # fmt: skip
        console.print(timings)
    last = report["last_run"]
    if last:
        console.print(
            f"Last run {last['run_id']} ({last['mode']}, {last['model'] or 'no model'}): "
            f"started {last['started_at']}, {last['status']}"
            + (f" at {last['finished_at']}" if last["finished_at"] else "")
            + f"; {report['runs']} run(s) in all"
        )

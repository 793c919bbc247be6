"""``autolabel demo``: the whole job on a local RedBrick, in one command, no account needed.

Seeds a local RedBrick emulator with synthetic CT studies (in OUT/emulator) and serves it
on a free localhost port; pre-labels with the default model -- submitting some tasks and
saving drafts of the others (ledger in OUT/work, results in OUT/results); a colleague
corrects one draft by hand; an automatic review pass accepts the tasks that agree with
the model and rejects the others, with reasons; and writes the HTML report
(OUT/report.html). OUT is emptied first when an earlier demo made it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

from autolabel.cli.commands._args import add_command, port

#: How the emulator's stages read in the summary.
_STAGE_NAMES = {"END": "Ground Truth", "Label": "Label", "Review_1": "Review_1"}

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "try everything on a local RedBrick with sample CT studies (no account needed)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = add_command(subparsers, "demo", SUMMARY, __doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("autolabel-demo"),
        metavar="DIR",
        help="folder for everything the demo makes (default: ./autolabel-demo)",
    )
    parser.add_argument("--studies", type=int, default=4, help="sample CT studies (default 4)")
    parser.add_argument(
        "--model",
        default="ct-threshold",
        metavar="NAME|PATH",
        help="model card (default: ct-threshold)",
    )
    parser.add_argument(
        "--organs-model",
        default="phantom-unet",
        metavar="NAME|PATH|none",
        help="second model, run as a dry run on the tasks still queued (default: phantom-unet)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--port", type=port, default=0, help="emulator port on localhost (default: a free one)"
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep the emulator running afterwards (Ctrl-C stops it) to try other commands",
    )
    parser.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo, print where everything is; 1 if a task failed, else 0."""
    from autolabel.cli.demo import DemoOptions, run_demo

    options = DemoOptions(
        out_dir=args.out, studies=args.studies, model=args.model,
        organs_model=None if args.organs_model == "none" else args.organs_model, device=args.device,
        port=args.port,
    )  # fmt: skip
    print(f"autolabel demo: a local RedBrick with {args.studies} sample CT studies, no account")
    result = run_demo(
        options,
        on_step=lambda line: print(f"  · {line}", flush=True),
        while_serving=_serve_until_interrupted if args.keep_serving else None,
    )
    if not args.keep_serving:
        _print_summary(result)
    failed = sum(len(run.failed) for run in result.runs)
    failed += result.review.count("failed") if result.review else 0
    return 1 if failed else 0


def _print_summary(result: Any) -> None:
    print("\nWhere the tasks are now (in the local RedBrick):")
    decisions = {d.task_id: d for d in (result.review.decisions if result.review else [])}
    for task in result.tasks:
        stage = _STAGE_NAMES.get(task.stage, task.stage)
        note = "draft saved by autolabel, waiting for a person" if task.has_draft else ""
        decision = decisions.get(task.task_id)
        if decision is not None:
            note = decision.status + (f" -- {decision.comment}" if decision.comment else "")
            if decision.status == "rejected":
                note += " (back in Label for the colleague)"
        print(f"  {task.name:<14} {stage:<13} {note}")
    work = result.work_dir
    autolabel, activate = shell_command()
    print(
        "\nLook at it (these commands work as they are, from this folder):\n"
        f"  report   {result.report}   (open it in a browser: previews, volumes, timings)\n"
        f"  ledger   {autolabel} status --work {work}\n"
        f"  results  {result.results_dir}/<task id>/  (label NIfTI, series.json, preview PNG)\n"
        f"  again    {autolabel} report --work {work} --runs 0 --out my-report.html\n"
        f"  more     {autolabel} demo --keep-serving  (keeps the local RedBrick up to try\n"
        "           `autolabel run` against it; the connection is printed)"
        + (
            f"\nOr first `{activate}`, then plain `autolabel ...` in that shell."
            if activate
            else ""
        )
    )


def shell_command() -> tuple[str, str]:
    """How to call autolabel from a fresh shell in the current folder, and the command that
    puts plain ``autolabel`` on the PATH (empty when it already is).

    Plain ``autolabel`` when this Python is not a virtual environment, or is the active one
    (``$VIRTUAL_ENV``); else the environment's own ``autolabel`` script, relative to the
    current folder when it lies inside it (``.venv/bin/autolabel``, as after
    ``./dev/demo.sh``), with ``. .venv/bin/activate``; ``python -m autolabel`` when the
    environment has no such script.
    """
    prefix = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or os.environ.get("VIRTUAL_ENV") == sys.prefix:
        return "autolabel", ""
    script, activate = prefix / "bin" / "autolabel", prefix / "bin" / "activate"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m autolabel", ""
    with contextlib.suppress(ValueError):
        script, activate = script.relative_to(Path.cwd()), activate.relative_to(Path.cwd())
    return shlex.quote(str(script)), f". {shlex.quote(str(activate))}"


def _serve_until_interrupted(emu: Any, result: Any) -> None:
    _print_summary(result)
    print(
        "\nThe local RedBrick keeps running until Ctrl-C. In another shell:\n"
        f"  export REDBRICK_URL={emu.url} REDBRICK_ORG_ID={emu.org_id} \\\n"
        f"         REDBRICK_PROJECT_ID={emu.project_id} REDBRICK_API_KEY={emu.api_key}\n"
        f"  {shell_command()[0]} run --dry-run --work demo-work   # the draft still queued\n"
        "(this key is the local emulator's own demo key; it opens nothing else)",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopped the local RedBrick")

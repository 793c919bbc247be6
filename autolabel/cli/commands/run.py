"""``autolabel run``: pre-label the tasks assigned to the API key in a stage.

Saves drafts by default; ``--finalize`` submits; ``--dry-run`` writes nothing to RedBrick
and keeps each task's label files, the exact ``series`` payload and a preview PNG in the
results folder. A ledger in the work folder makes re-runs skip what the same model version
did; ``--force`` redoes it. Exit codes: 0 all done, 1 some tasks failed, 2 usage or
configuration (also: another run holds the work folder; ``--wait-lock`` waits for it),
3 authentication or RedBrick unreachable.

``--ray`` spreads the tasks over Ray actors (one per GPU, else CPU actors): a local Ray
instance, or an existing cluster with ``--ray auto`` / ``--ray ray://HOST:PORT``. The
ledger stays in the work folder on this machine, which alone decides every write.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from autolabel.cli.commands._args import add_command, task_id
from autolabel.cli.commands._connect import (
    add_connection_arguments,
    connect,
    connection_settings,
    require_stage,
)
from autolabel.settings import ensure_writable_folder

if TYPE_CHECKING:
    from rich.console import Console

    from autolabel.imaging.checks import ImageLimits
    from autolabel.pipeline.options import RunOptions
    from autolabel.pipeline.ray import RayOptions
    from autolabel.pipeline.summary import RunSummary

#: The line ``autolabel --help`` shows for this command.
SUMMARY = "pre-label the tasks assigned to the API key (drafts by default)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` sub-command."""
    parser = add_command(subparsers, "run", SUMMARY, __doc__)
    add_connection_arguments(parser)
    add_run_arguments(parser)
    add_ray_arguments(parser)
    parser.set_defaults(handler=run_command)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and the actor flags of a run spread over Ray."""
    ray = parser.add_argument_group("Ray (scale out over GPUs and machines)")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on Ray actors: a local instance, or 'auto' / 'ray://HOST:PORT' for a cluster",
    )
    ray.add_argument(
        "--ray-actors", type=int, metavar="N", help="actors (default: one per GPU, else per CPU)"
    )
    ray.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each actor reserves (default: 1)",
    )
    ray.add_argument(
        "--ray-in-flight",
        type=int,
        default=2,
        metavar="K",
        help="tasks handed to one actor at a time (default: 2)",
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The :class:`~autolabel.pipeline.ray.RayOptions` the flags ask for, or None without --ray."""
    if getattr(args, "ray", None) is None:
        return None
    from autolabel.pipeline.ray import RayOptions

    return RayOptions(
        address=args.ray or None,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        in_flight=args.ray_in_flight,
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The task, model, mode and output flags shared by ``run`` and ``watch``."""
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("--stage", help="label stage to work in (default: Label)")
    tasks.add_argument(
        "--task-id",
        action="append",
        default=[],
        metavar="ID",
        type=task_id,
        help="only this task (repeatable)",
    )
    tasks.add_argument("--name", help='tasks whose name starts with NAME ("NAME" for exact)')
    tasks.add_argument("--limit", type=int, help="at most N tasks")
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="NAME|PATH", help="model card (default: ct-threshold)")
    model.add_argument(
        "--device",
        help="auto (default), cpu, cuda, cuda:N, or a list (cuda:0,cuda:1): one warm model each",
    )
    model.add_argument("--mapping", metavar="FILE", help="model label → category (TOML/JSON)")
    model.add_argument(
        "--allow-unmapped", action="store_true", help="drop model labels with no category"
    )
    model.add_argument(
        "--empty",
        choices=("skip", "submit"),
        default="skip",
        help="when the model finds nothing: skip the task (default), or submit empty labels",
    )
    model.add_argument(
        "--instances", action="store_true", help="one instance per connected component"
    )
    model.add_argument(
        "--min-component-voxels",
        type=non_negative_int,
        default=0,
        help="drop smaller components (0 or more)",
    )
    add_guard_arguments(model)
    mode = parser.add_argument_group("mode and output")
    exclusive = mode.add_mutually_exclusive_group()
    exclusive.add_argument("--finalize", action="store_true", help="submit instead of drafts")
    exclusive.add_argument(
        "--dry-run", action="store_true", help="write nothing to RedBrick; keep results locally"
    )
    routing = parser.add_argument_group(
        "confidence routing (models that give probabilities: phantom-unet, nnU-Net, ...)"
    )
    routing.add_argument(
        "--finalize-above",
        metavar="T|FILE",
        help="submit a task whose every category's confidence reaches T (0..1, or per "
        "category from a TOML/JSON file); save the others as drafts",
    )
    routing.add_argument(
        "--drop-below",
        metavar="T|FILE",
        help="leave out a category whose confidence is below T (0..1, or per category)",
    )
    routing.add_argument(
        "--prioritize",
        action="store_true",
        help="give drafts the RedBrick priority 1 - confidence: labelers open the hardest first",
    )
    mode.add_argument("--out", help="results folder (default: WORK/results)")
    mode.add_argument("--work", help="work folder with the ledger (default: ./autolabel-work)")
    mode.add_argument(
        "--force", action="store_true", help="redo tasks the ledger (or RedBrick) marks done"
    )
    mode.add_argument(
        "--wait-lock",
        nargs="?",
        type=float,
        const=-1.0,
        default=0.0,
        metavar="SECONDS",
        help="if another run holds the work folder, wait for it (up to SECONDS; default: "
        "as long as it takes) instead of exiting with code 2",
    )
    mode.add_argument(
        "--settle-window",
        type=float,
        metavar="SECONDS",
        help="how long a write whose reply was lost may still land on RedBrick before it "
        "is sent again (default: the client read timeout + a gateway timeout + margin)",
    )
    mode.add_argument("--fetch-workers", type=int, help="parallel downloads (default: 4)")
    mode.add_argument("--write-workers", type=int, help="parallel uploads (default: 2)")
    mode.add_argument("--queue-depth", type=int, help="tasks waiting between stages (default: 2)")
    mode.add_argument("--no-previews", action="store_true", help="skip the preview PNGs")
    mode.add_argument("--json", action="store_true", help="print the summary as JSON")
    mode.add_argument("--quiet", action="store_true", help="no progress bars")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of 0 or more (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_guard_arguments(parser: argparse._ActionsContainer) -> None:
    """``--model-timeout``, ``--max-voxels`` and ``--max-image-mb`` (run, watch, predict)."""
    parser.add_argument(
        "--model-timeout",
        type=positive_number,
        metavar="SECONDS",
        help="fail a task whose model predict runs longer (default: the card's "
        "[runtime] timeout_s, else 900)",
    )
    parser.add_argument(
        "--max-voxels",
        type=positive_int,
        metavar="N",
        help="refuse a series with more voxels, before decoding (default 512x512x2048)",
    )
    parser.add_argument(
        "--max-image-mb",
        type=positive_int,
        metavar="MB",
        help="refuse a series whose decoded data is larger, before decoding (default 2048)",
    )


def image_limits(args: argparse.Namespace) -> ImageLimits:
    """The :class:`~autolabel.imaging.ImageLimits` of ``--max-voxels`` / ``--max-image-mb``."""
    from autolabel.imaging.checks import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, ImageLimits

    return ImageLimits(
        args.max_voxels or DEFAULT_MAX_VOXELS,
        (args.max_image_mb << 20) if args.max_image_mb else DEFAULT_MAX_BYTES,
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` the flags (over ``[run]`` in autolabel.toml) ask for."""
    from autolabel.convert import load_mapping
    from autolabel.pipeline.options import resolve_options
    from autolabel.pipeline.routing import load_thresholds

    limits = image_limits(args)
    return resolve_options(
        {
            "stage": args.stage,
            "model": args.model,
            "device": args.device,
            "mode": "final" if args.finalize else "dry-run" if args.dry_run else None,
            "work_dir": args.work,
            "out_dir": args.out,
            "limit": args.limit,
            "force": args.force or None,
            "fetch_workers": args.fetch_workers,
            "write_workers": args.write_workers,
            "queue_depth": args.queue_depth,
            "task_ids": tuple(args.task_id),
            "name": args.name,
            "mapping": load_mapping(args.mapping) if args.mapping else None,
            "allow_unmapped": args.allow_unmapped,
            "empty": args.empty,
            "instances": args.instances,
            "min_component_voxels": args.min_component_voxels,
            "previews": not args.no_previews,
            "model_timeout_s": args.model_timeout,
            "max_voxels": limits.max_voxels,
            "max_image_bytes": limits.max_bytes,
            "lock_wait_s": None if args.wait_lock < 0 else args.wait_lock,
            "settle_window_s": args.settle_window,
            "finalize_above": (
                load_thresholds(args.finalize_above, "--finalize-above")
                if args.finalize_above
                else None
            ),
            "drop_below": (
                load_thresholds(args.drop_below, "--drop-below") if args.drop_below else None
            ),
            "prioritize": args.prioritize or None,
        },
        config_path=args.config,
    )


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM: the run finishes the tasks in hand and stops.

    A second signal restores the default handlers, so a second Ctrl-C interrupts at once.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise KeyboardInterrupt
        print("autolabel: stopping after the tasks in hand (again to abort)", file=sys.stderr)
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_command(args: argparse.Namespace) -> int:
    """Open the project, load the model once, run, print the summary; return the exit code."""
    from autolabel.cli.progress import RunProgress, make_console
    from autolabel.inference import load_model
    from autolabel.pipeline import run

    options = run_options(args)
    console = make_console(stderr=True)
    cluster = ray_options(args)
    if cluster is not None:
        summary = _run_on_ray(args, options, cluster, console)
        return _report(args, console, summary, options)
    ensure_writable_folder(options.results_dir, "--out")
    project = connect(args)
    with project:
        require_stage(project, options.stage)
        model = load_model(options.model, device=options.device)
        with (
            stop_on_signals() as stop,
            RunProgress(console, enabled=not (args.quiet or args.json)) as progress,
        ):
            summary = run(
                project, model, options, stop=stop, listener=progress, command=tuple(sys.argv)
            )
    return _report(args, console, summary, options)


def _run_on_ray(
    args: argparse.Namespace, options: RunOptions, cluster: RayOptions, console: Console
) -> RunSummary:
    """The run on Ray actors: connection settings (key included) go to the actors once."""
    from autolabel.cli.progress import RunProgress
    from autolabel.pipeline.ray import run_on_ray

    connection = connection_settings(args)
    with (
        stop_on_signals() as stop,
        RunProgress(console, enabled=not (args.quiet or args.json)) as progress,
    ):
        return run_on_ray(
            connection,
            options.model,
            options,
            cluster,
            device=options.device,
            stop=stop,
            listener=progress,
            command=tuple(sys.argv),
        )


def _report(
    args: argparse.Namespace, console: Console, summary: RunSummary, options: RunOptions
) -> int:
    """Print the summary (JSON or tables) and return the exit code."""
    from rich.table import Table

    from autolabel.cli.progress import print_summary

    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return summary.exit_code
    print_summary(console, summary)
    if summary.workers:
        table = Table(title="Ray actors")
        for column in ("actor", "node", "device", "tasks", "failed", "busy s", "tasks/min"):
            table.add_column(column, justify="left" if column in ("actor", "node") else "right")
        table.add_column("lost")
        for w in summary.workers:
            table.add_row(
                w.name, w.node, w.device, str(w.tasks), str(w.failed), f"{w.busy_s:.1f}",
                f"{w.tasks_per_min:.1f}", w.died or "",
            )  # fmt: skip
        console.print(table)
    console.print(f"results: {options.results_dir}")
    if summary.interrupted:
        console.print("stopped before every task was done: run the same command again for the rest")
    return summary.exit_code

"""What a person sees during and after a run: rich progress bars per phase, and a summary.

Nothing here changes what a run does; the pipeline reports through two callbacks
(``on_phase(task_id, phase)`` and ``on_task(outcome)``, the
:class:`~autolabel.pipeline.summary.RunListener` protocol) that :class:`RunProgress` provides.

Every console of autolabel comes from :func:`make_console`, which turns off Rich markup and
emoji codes: task names, reasons and server messages are printed as they are (a task named
``[/red]x`` is text, not a style tag), and our own styles are given as ``Text`` spans.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from autolabel.pipeline.summary import RunSummary, TaskOutcome

#: The phases of a run, in order, as the progress bars name them.
PHASES: tuple[str, ...] = ("fetch", "infer", "write")


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A Rich console that prints strings literally: no markup, no emoji codes, no
    highlighting. Styles are passed as :class:`rich.text.Text` spans instead."""
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


def outcome_line(outcome: TaskOutcome, *, indent: str = "", task_id: bool = False) -> Text:
    """``skipped NAME: reason`` (``failed`` in red), the name and reason as plain text."""
    style = "yellow" if outcome.status == "skipped" else "red"
    name = outcome.task_name or outcome.task_id
    if task_id:
        name += f" ({outcome.task_id})"
    status = f"{outcome.status:<7}" if indent else outcome.status
    return Text.assemble(indent, (status, style), f" {name}: {outcome.reason}")


class RunProgress:
    """One progress bar per phase with counts and ETA; a line per skipped or failed task.

    The total of each bar grows as tasks are queued (the listing is streamed), so the ETA
    firms up as the run goes. ``enabled=False`` shows nothing (``--json``, ``--quiet``).
    """

    def __init__(
        self, console: Console, *, enabled: bool = True, phases: Sequence[str] = PHASES
    ) -> None:
        self.console = console
        self.enabled = enabled
        self._lock = threading.Lock()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._bars: dict[str, TaskID] = {
            name: self._progress.add_task(name, total=0) for name in phases
        }
        self._queued = 0
        self._completed: dict[str, set[str]] = {}

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def on_phase(self, task_id: str, phase: str) -> None:
        """A task was queued (``phase == "queued"``) or finished ``phase``."""
        with self._lock:
            if phase == "queued":
                self._queued += 1
                for bar in self._bars.values():
                    self._progress.update(bar, total=self._queued)
            elif phase in self._bars:
                self._completed.setdefault(task_id, set()).add(phase)
                self._progress.advance(self._bars[phase])

    def on_task(self, outcome: TaskOutcome) -> None:
        """A task ended: settle the bars of the phases it skipped; log skips and failures."""
        with self._lock:
            completed = self._completed.pop(outcome.task_id, set())
            for phase, bar in self._bars.items():
                if phase not in completed:
                    self._progress.advance(bar)
            if outcome.status in ("skipped", "failed") and self.enabled:
                self._progress.console.print(outcome_line(outcome))


def summary_table(summary: RunSummary) -> Table:
    """The end-of-run table: outcome counts, then per-phase timings."""
    table = Table(title=f"autolabel run {summary.run_id[:8]} · {summary.mode} · {summary.model}")
    table.add_column("phase")
    table.add_column("workers", justify="right")
    table.add_column("tasks", justify="right")
    table.add_column("busy s", justify="right")
    table.add_column("s / task", justify="right")
    if summary.stages is not None:
        for s in summary.stages.stages:
            table.add_row(
                s.name, str(s.workers), str(s.started), f"{s.busy_s:.2f}", f"{s.per_job_s:.2f}"
            )
    table.caption = (
        f"done {len(summary.done)} · skipped {len(summary.skipped)} · failed "
        f"{len(summary.failed)} · already done {summary.already_done} · wall "
        f"{summary.wall_s:.1f} s"
    )
    return table


def print_summary(console: Console, summary: RunSummary) -> None:
    """Print the summary table, then every skipped and failed task with its reason."""
    console.print(summary_table(summary))
    labels = {
        "finalize": "submitted (every category reached --finalize-above)",
        "draft": "saved as drafts (below --finalize-above)",
        "dropped": "with a category left out (--drop-below)",
    }
    routes = [f"{summary.routes[k]} {text}" for k, text in labels.items() if k in summary.routes]
    if routes:
        console.print("  routes: " + ", ".join(routes), highlight=False)
    for note in summary.notes:
        console.print(f"  [yellow]note[/] {note}", highlight=False)
    for outcome in summary.skipped + summary.failed:
        console.print(outcome_line(outcome, indent="  ", task_id=True))

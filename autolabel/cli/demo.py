"""The whole job on a local RedBrick, in one call: what ``autolabel demo`` does.

:func:`run_demo` needs no account and nothing but this package:

1. seeds a local RedBrick (:mod:`autolabel.emulator`) in ``OUT/emulator`` with synthetic
   CT studies, all queued in ``Label`` for the demo's API key, and serves it on a free
   ``localhost`` port (or ``port``) in this process;
2. pre-labels with the model (default ``ct-threshold``), the ledger in ``OUT/work`` and the
   results in ``OUT/results``: first **submits** ``submit`` tasks (``mode="final"``, as
   ``autolabel run --finalize --limit N``), then saves **drafts** of the rest (as
   ``autolabel run``);
3. plays a colleague who opens one draft, erases one lung from it (half of another
   category for a model without lungs) and submits it
   (through the API, as a person with their own key), so that the review stage holds
   labels that agree with the model and labels that do not;
4. queues the review stage for the API key (as a project admin would) and reviews it
   with :func:`autolabel.reviews.review_tasks` in ``auto`` mode: accepted when every
   category's Dice against the model is at least ``min_dice``, rejected with the scores
   otherwise;
5. runs a second model, ``organs_model`` (default ``phantom-unet``: a small 3-D U-Net,
   so the full torch path -- preprocessing, sliding window, postprocessing), as a **dry
   run** on the tasks still queued for the key: organ pre-labels kept locally, nothing
   written to RedBrick;
6. writes the HTML report of every run and the review (``OUT/report.html``).

``OUT`` is emptied first when it holds an earlier demo (it has the marker file
:data:`MARKER`); a folder that holds anything else is refused with
:class:`~autolabel.errors.ConfigError`, so a demo never deletes a user's files. The demo
key is the emulator's own: it opens only this local emulator.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.emulator import EmulatorHandle, seed, serve_in_thread
from autolabel.errors import ConfigError
from autolabel.inference.spec import SegmentationModel
from autolabel.pipeline import RunOptions, RunSummary
from autolabel.pipeline import run as run_pipeline
from autolabel.redbrick import Project, get_project
from autolabel.report import ReviewRow, write_report
from autolabel.reviews import ReviewSummary, review_tasks

#: The file that marks a folder as made by the demo (so that a re-run may empty it).
MARKER = ".autolabel-demo"
#: The review stage of the seeded project.
REVIEW_STAGE = "Review_1"
#: Who plays the colleague who corrects a draft by hand.
COLLEAGUE = ("Casey Colleague", "colleague@example.com")

#: Called with one line per step, as the demo goes.
StepListener = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What :func:`run_demo` does (see the module docstring).

    ``studies`` phantoms of ``shape`` voxels are seeded; ``submit`` of them are submitted
    (default: half, rounded up, leaving at least one draft when there are two or more).
    """

    out_dir: Path = Path("autolabel-demo")
    studies: int = 4
    shape: tuple[int, int, int] = (128, 128, 64)
    model: str | Path = "ct-threshold"
    organs_model: str | Path | None = "phantom-unet"
    device: str = "auto"
    port: int = 0
    submit: int | None = None
    min_dice: float = 0.8

    def __post_init__(self) -> None:
        if self.studies < 1:
            raise ConfigError(f"the demo needs at least 1 study, got {self.studies}")
        if self.submit is not None and not 0 <= self.submit <= self.studies:
            raise ConfigError(f"submit must be within 0..{self.studies}, got {self.submit}")

    @property
    def submit_count(self) -> int:
        """How many tasks the demo submits."""
        if self.submit is not None:
            return self.submit
        return self.studies - self.studies // 2 if self.studies > 1 else 0


@dataclass(frozen=True, slots=True)
class TaskState:
    """Where a task stands in the emulator at the end of the demo."""

    task_id: str
    name: str
    stage: str
    state: str
    has_draft: bool


@dataclass(kw_only=True)
class DemoResult:
    """What the demo made and where it is."""

    out_dir: Path
    emulator_dir: Path
    work_dir: Path
    results_dir: Path
    report: Path
    url: str
    runs: list[RunSummary] = field(default_factory=list)
    corrected: str | None = None
    review: ReviewSummary | None = None
    tasks: list[TaskState] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Paths:
    out: Path
    emulator: Path
    work: Path
    results: Path
    report: Path


def prepare_folder(out_dir: Path) -> bool:
    """Make ``out_dir`` an empty demo folder; True when an earlier demo was removed.

    Refuses (:class:`ConfigError`) a non-empty folder that an earlier demo did not make.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder; choose another --out")
    earlier = (out_dir / MARKER).is_file()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not earlier:
        raise ConfigError(
            f"{out_dir} is not empty and was not made by `autolabel demo`; choose another "
            "--out (the demo empties its folder on each run)"
        )
    if earlier:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("made by autolabel demo; emptied on the next run\n")
    return earlier


def run_demo(
    options: DemoOptions,
    *,
    on_step: StepListener | None = None,
    while_serving: Callable[[EmulatorHandle, DemoResult], None] | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring) and return what it made.

    ``on_step`` gets a line per step. ``while_serving`` is called at the end with the
    emulator still up (``autolabel demo --keep-serving`` waits there for Ctrl-C).
    Raises :class:`ConfigError` for a folder it may not use or an unknown model.
    """
    say = on_step or (lambda line: None)
    out = options.out_dir
    paths = _Paths(out, out / "emulator", out / "work", out / "results", out / "report.html")
    if prepare_folder(out):
        say(f"removed the previous demo in {out}")
    seed(paths.emulator, studies=options.studies, shape=options.shape)
    with serve_in_thread(paths.emulator, options.port) as emu:
        say(f"seeded {options.studies} CT studies; local RedBrick at {emu.url}")
        result = DemoResult(
            out_dir=out, emulator_dir=paths.emulator, work_dir=paths.work,
            results_dir=paths.results, report=paths.report, url=emu.url,
        )  # fmt: skip
        model = _load(options)
        with _open(emu, emu.api_key) as project:
            _prelabel(project, model, options, paths, result, say)
            result.corrected = _colleague_corrects(emu, result, say)
            result.review = review_tasks(
                project, model, REVIEW_STAGE, decision="auto", min_dice=options.min_dice,
                task_ids=_queue_review(emu), work_dir=paths.work / "review",
            )  # fmt: skip
            say(_review_line(result.review))
            if options.organs_model is not None:
                _organs_dry_run(project, options, paths, result, say)
        result.tasks = _task_states(emu)
        write_report(
            paths.work, paths.report, runs=0, review=review_rows(result.review),
            title="autolabel demo",
        )  # fmt: skip
        say(f"wrote the report {paths.report}")
        if while_serving is not None:
            while_serving(emu, result)
    return result


def review_rows(summary: ReviewSummary | None) -> list[ReviewRow]:
    """The report's review table rows for a review pass."""
    if summary is None:
        return []
    return [
        ReviewRow(d.task_id, d.task_name, d.status, dict(d.dice), d.comment or d.reason)
        for d in summary.decisions
    ]


def _load(options: DemoOptions) -> SegmentationModel:
    from autolabel.inference import load_model

    return load_model(options.model, device=options.device)


@contextmanager
def _open(emu: EmulatorHandle, api_key: str) -> Iterator[Project]:
    project = get_project(emu.org_id, emu.project_id, api_key, url=emu.url)
    try:
        yield project
    finally:
        project.close()


def _prelabel(
    project: Project,
    model: SegmentationModel,
    options: DemoOptions,
    paths: _Paths,
    result: DemoResult,
    say: StepListener,
) -> None:
    """Submit the first tasks, then save drafts of the others: two runs in one ledger."""
    steps = [("final", options.submit_count), ("draft", None)]
    for mode, limit in steps:
        if limit == 0:
            continue
        run_options = RunOptions(mode=mode, limit=limit, work_dir=paths.work, out_dir=paths.results)
        summary = run_pipeline(project, model, run_options)
        result.runs.append(summary)
        done = ", ".join(o.task_name for o in summary.done) or "none"
        verb = "submitted" if mode == "final" else "saved drafts of"
        say(f"{verb} {len(summary.done)} task(s) with {summary.model}: {done}")
        for outcome in summary.skipped + summary.failed:
            say(f"  {outcome.status} {outcome.task_name}: {outcome.reason}")


def _organs_dry_run(
    project: Project, options: DemoOptions, paths: _Paths, result: DemoResult, say: StepListener
) -> None:
    """A second model pre-labels organs on the tasks still queued, writing nothing."""
    from autolabel.inference import load_model

    assert options.organs_model is not None
    model = load_model(options.organs_model, device=options.device)
    run_options = RunOptions(mode="dry-run", work_dir=paths.work, out_dir=paths.results / "organs")
    summary = run_pipeline(project, model, run_options)
    result.runs.append(summary)
    done = ", ".join(o.task_name for o in summary.done) or "none"
    say(f"dry run of {summary.model} (organs, nothing written to RedBrick): {done}")


def _colleague_corrects(emu: EmulatorHandle, result: DemoResult, say: StepListener) -> str | None:
    """A person opens the first draft, erases half of one category and submits it.

    The category is ``Lung`` when the model labels lungs (one lung goes), else the first
    one the draft has. Returns the task's name, or None when there is no draft to edit.
    """
    from autolabel import imaging

    drafts = [o for run in result.runs if run.mode == "draft" for o in run.done]
    if not drafts:
        return None
    outcome = min(drafts, key=lambda o: o.task_name)
    entry = _payload_entry(Path(outcome.files["payload"]))
    categories = {int(v): str(c.get("category")) for v, c in entry["segmentMap"].items()}
    if not categories:
        return None
    category = "Lung" if "Lung" in categories.values() else next(iter(categories.values()))
    source = imaging.load_nifti(entry["segmentations"])
    labels = np.array(source.array)
    half = labels[: labels.shape[0] // 2]  # a view: one side of the patient
    half[np.isin(half, [v for v, c in categories.items() if c == category])] = 0
    scratch = Path(tempfile.mkdtemp(prefix="colleague-", dir=result.work_dir))
    try:
        entry["segmentations"] = str(
            imaging.write_label_nifti(labels, source, scratch / "labels.nii.gz")
        )
        name, email = COLLEAGUE
        person = emu.add_user(name, email=email, api_key=True)
        emu.assign(outcome.task_id, person.user_id)
        with _open(emu, person.api_key or "") as as_person:
            failed = as_person.labeling.put_tasks(
                "Label", [{"taskId": outcome.task_id, "series": [entry]}], finalize=True
            )
        if failed:
            raise ConfigError(f"the colleague could not submit {outcome.task_name}: {failed}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    what = "one lung" if category == "Lung" else f"half of {category}"
    say(f"{name} edited the draft of {outcome.task_name} by hand (erased {what}), submitted it")
    return outcome.task_name


def _payload_entry(path: Path) -> dict[str, Any]:
    """The first series entry of a task's ``series.json`` (what was written to RedBrick)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    entry: dict[str, Any] = payload["series"][0]
    return entry


def _queue_review(emu: EmulatorHandle) -> list[str]:
    """Assign the review stage's tasks to the demo key, as the project's admin would."""
    task_ids = emu.task_ids(REVIEW_STAGE)
    for task_id in task_ids:
        emu.assign(task_id, emu.key_user_id)
    return task_ids


def _review_line(summary: ReviewSummary) -> str:
    counts = ", ".join(
        f"{summary.count(s)} {s}" for s in ("accepted", "rejected", "skipped", "failed")
        if summary.count(s)
    )  # fmt: skip
    return f"reviewed {len(summary.decisions)} task(s) in {summary.stage}: {counts or 'none'}"


def _task_states(emu: EmulatorHandle) -> list[TaskState]:
    states = []
    for task in emu.tasks():
        latest = emu.latest_labels(task.task_id)
        draft = latest is not None and not latest.finished and task.stage_name == "Label"
        states.append(TaskState(task.task_id, task.name, task.stage_name, task.state, draft))
    return states


__all__ = [
    "MARKER",
    "DemoOptions",
    "DemoResult",
    "TaskState",
    "prepare_folder",
    "review_rows",
    "run_demo",
]

"""Benchmark (issue #5): a whole pre-labelling job, ``autolabel run`` against the official SDK.

One invocation seeds an emulator data directory once (``--studies`` synthetic CT studies of
``--shape``, DICOM series; kept in ``--cache`` for later runs), then runs the contenders
alternately (A B B A ...), each on a fresh copy of the seeded data served with
``serve_in_thread`` and each in its own process, timed from start to exit (imports and model
load included):

* ``autolabel``: the CLI, ``autolabel run --json --quiet`` with default settings (drafts)
  and ``--model`` (default: the two-threshold python card of ``bench/cards``, the workload
  of issue 16; ``ct-threshold`` is issue 5's);
* ``sdk``: ``bench/sdk_baseline.py``, the sequential script written from RedBrick's docs
  (export with files and DICOM-to-NIfTI, ``nib.load(...).get_fdata()``, the same model,
  ``nib.save``, ``put_tasks(..., finalize=False)``, one task at a time).

Start-up is measured from outside: the emulator (started, and its data copied, before the
clock starts) records when each kind of request first reaches it, and each contender's
time to its first request, first task listing and first image download (``storage GET``)
is counted from the moment its process is spawned. Peak RSS is each process's own
(``wait4``), and tasks per minute are ``--studies`` over the wall time.

``--memory 50 200`` instead seeds that many small studies (``--memory-shape``) and prints
the peak RSS of ``autolabel run`` on each: memory must stay flat in the number of tasks.

After each run the emulator's state is checked: every task has exactly one accepted write,
is still in Label and holds a draft. The stored label files are read back and mapped to
taxonomy categories; the two contenders' files must agree (same grid, and per-task voxel
counts per category within ``--tolerance``; exact equality is reported too).

Medians of ``--repeats`` runs per contender, their ratio (sdk / autolabel, above 1:
autolabel is faster), the busy seconds per stage of our runs and the baseline's seconds per
step go to a markdown table on stdout and to ``bench/results/pipeline.json``.

    .venv/bin/python bench/bench_pipeline.py [--studies 9] [--shape 512 512 160] [--repeats 3]
        [--model CARD] [--memory 50 200]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from autolabel.emulator import EmulatorHandle, seed, serve_in_thread
from autolabel.inference.card import read_card

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
#: The two-threshold python card (issue 16's workload).
DEFAULT_CARD = str(ROOT / "bench" / "cards" / "two-threshold")
CONTENDERS = ("autolabel", "sdk")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def seeded(cache: Path, studies: int, shape: tuple[int, int, int]) -> Path:
    """The seeded data directory for (studies, shape), made once."""
    folder = cache / f"seed-{studies}-{'x'.join(map(str, shape))}"
    done = folder / ".complete"
    if not done.is_file():
        print(f"seeding {studies} studies of {shape} into {folder} ...", flush=True)
        began = time.perf_counter()
        seed(folder, studies=studies, shape=shape)
        done.write_text("ok\n", encoding="utf-8")
        print(f"seeded in {time.perf_counter() - began:.0f} s", flush=True)
    return folder


class FirstRequests:
    """When each kind of request first reached the emulator (``time.time()``): GraphQL
    operations by name, ``storage GET`` for image downloads. Installed on the emulator
    object of this process, so the contender's process is untouched."""

    def __init__(self, emu: EmulatorHandle) -> None:
        self.first: dict[str, float] = {}
        self.order: list[str] = []
        emulator = emu.emulator
        execute, read = emulator.execute, emulator.blobs.read

        def timed_execute(op: Any, variables: Any, caller: Any) -> Any:
            self._seen(op.name or ",".join(op.root_fields))
            return execute(op, variables, caller)

        def timed_read(key: str) -> Any:
            self._seen("storage GET")
            return read(key)

        emulator.execute = timed_execute  # type: ignore[method-assign]
        emulator.blobs.read = timed_read  # type: ignore[method-assign]

    def _seen(self, name: str) -> None:
        if name not in self.first:
            self.first[name] = time.time()
            self.order.append(name)

    def since(self, start: float) -> dict[str, float]:
        """Seconds from ``start`` to the first request, listing and image download."""
        out = {"first_request_s": min(self.first.values()) - start} if self.first else {}
        listing = [t for name, t in self.first.items() if name in LISTINGS]
        if listing:
            out["first_listing_s"] = min(listing) - start
        if "storage GET" in self.first:
            out["first_download_s"] = self.first["storage GET"] - start
        return out


#: The operations that list a stage's tasks (ours, and the SDK's export).
LISTINGS = ("tasksListSDK", "tasksPagedSDK")


def spawn(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``command``; its exit code, output, wall time, start time and peak RSS (MB)."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.time()
        began = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "code": process.returncode,
        "stdout": out.read_text(encoding="utf-8", errors="replace"),
        "stderr": err.read_text(encoding="utf-8", errors="replace"),
        "wall_s": wall,
        "started": started,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def run_autolabel(
    emu: EmulatorHandle, work: Path, model: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    command = [
        PYTHON, "-m", "autolabel", "run", "--url", emu.url, "--org", emu.org_id,
        "--project", emu.project_id, "--work", str(work), "--json", "--quiet", "--model", model,
        *extra,
    ]  # fmt: skip
    env = dict(os.environ, REDBRICK_API_KEY=emu.api_key)
    probe = FirstRequests(emu)
    done = spawn(command, env, work)
    if done["code"] != 0:
        raise RuntimeError(f"autolabel run failed ({done['code']}): {done['stderr'][-3000:]}")
    summary = json.loads(done["stdout"])
    return {
        "wall_s": done["wall_s"],
        "peak_rss_mb": done["peak_rss_mb"],
        "startup": probe.since(done["started"]),
        "summary": summary,
    }


def run_sdk(
    emu: EmulatorHandle, work: Path, model: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    timings = work / "timings.json"
    command = [
        PYTHON, str(ROOT / "bench" / "sdk_baseline.py"), "--url", emu.url, "--org", emu.org_id,
        "--project", emu.project_id, "--work", str(work), "--timings", str(timings),
        "--model", model,
    ]  # fmt: skip
    env = dict(os.environ, REDBRICK_API_KEY=emu.api_key)
    probe = FirstRequests(emu)
    done = spawn(command, env, work)
    if done["code"] != 0:
        raise RuntimeError(f"sdk baseline failed ({done['code']}): {done['stderr'][-3000:]}")
    return {
        "wall_s": done["wall_s"],
        "peak_rss_mb": done["peak_rss_mb"],
        "startup": probe.since(done["started"]),
        "timings": json.loads(timings.read_text(encoding="utf-8")),
    }


def stored_labels(emu: EmulatorHandle) -> dict[str, dict[str, Any]]:
    """Per task (by name): the draft check, the stored label file's grid, per-category voxel
    counts, and a digest of the voxels mapped to taxonomy categories."""
    writes = emu.write_counts()
    out: dict[str, dict[str, Any]] = {}
    for task in emu.tasks():
        latest = emu.latest_labels(task.task_id)
        problems = []
        if writes.get(task.task_id, 0) != 1:
            problems.append(f"{writes.get(task.task_id, 0)} accepted writes")
        if task.stage_name != "Label":
            problems.append(f"in stage {task.stage_name}")
        if latest is None or latest.finished:
            problems.append("no draft")
        entry: dict[str, Any] = {"problems": problems}
        files = emu.label_files(task.task_id)
        if len(files) == 1:
            raw = gzip.decompress(files[0]) if files[0][:2] == b"\x1f\x8b" else files[0]
            image = nib.Nifti1Image.from_bytes(raw)
            values = np.asarray(image.dataobj)
            lut = np.zeros(256, dtype=np.uint8)  # instance value -> classId + 1 (0: none)
            names = {}
            for label in emu.labels(task.task_id):
                lut[int(label["dicom"]["instanceid"])] = int(label["classid"]) + 1
                names[int(label["classid"]) + 1] = label["category"]
            categories = lut[values]
            counts = np.bincount(categories.ravel(), minlength=256)
            entry.update(
                shape=list(values.shape),
                affine=np.round(image.affine, 4).tolist(),
                voxels={names[c]: int(counts[c]) for c in sorted(names)},
                digest=hashlib.sha256(np.asfortranarray(categories).tobytes("F")).hexdigest(),
            )
        else:
            problems.append(f"{len(files)} label files")
        out[task.name] = entry
    return out


def compare(ours: dict[str, Any], theirs: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Per-task agreement of two contenders' stored labels."""
    worst = 0.0
    identical = 0
    disagreements = []
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None or "voxels" not in a or "voxels" not in b:
            disagreements.append(f"{name}: missing labels")
            continue
        if a["shape"] != b["shape"] or not np.allclose(a["affine"], b["affine"], atol=1e-3):
            disagreements.append(f"{name}: grids differ")
            continue
        identical += a["digest"] == b["digest"]
        for category in set(a["voxels"]) | set(b["voxels"]):
            x, y = a["voxels"].get(category, 0), b["voxels"].get(category, 0)
            relative = abs(x - y) / max(x, y, 1)
            worst = max(worst, relative)
            if relative > tolerance:
                disagreements.append(f"{name} {category}: {x} vs {y} voxels")
    return {
        "tasks": len(set(ours) | set(theirs)),
        "identical_voxels": identical,
        "worst_relative_count_difference": worst,
        "tolerance": tolerance,
        "disagreements": disagreements,
    }


#: The card kinds whose runners honour ``[runtime] autocast`` (autolabel/inference/__init__.py
#: ``load_model``: TorchModel and the MONAI bundle); the others run as they are.
AUTOCAST_KINDS = ("torchscript", "monai-bundle")


def check_autocast_card(model: str) -> None:
    """Refuse ``--autocast`` for what it cannot change: a name instead of a card folder, or
    a card whose kind ignores autocast (a python card would run the same in "fp16" and
    "fp32", and the two runs would be reported as a comparison)."""
    source = Path(model)
    if not (source / "model.toml").is_file():
        raise SystemExit(f"--autocast needs a model card folder, not {model!r}")
    kind = read_card(source / "model.toml").kind
    if kind not in AUTOCAST_KINDS:
        raise SystemExit(
            f"--autocast has no effect on {model} (kind {kind!r}): only "
            f"{' and '.join(AUTOCAST_KINDS)} cards run under autocast; pass such a card "
            "with --model"
        )


def card_with_autocast(model: str, autocast: str, scratch: Path) -> str:
    """A copy of the card folder ``model`` whose ``[runtime] autocast`` is ``autocast``."""
    check_autocast_card(model)
    source = Path(model)
    copy = scratch / f"card-{source.name}-{autocast}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    toml = copy / "model.toml"
    text = toml.read_text(encoding="utf-8")
    line = f'autocast = "{autocast}"'
    if re.search(r"(?m)^autocast\s*=", text):
        text = re.sub(r"(?m)^autocast\s*=.*$", line, text)
    elif "[runtime]" in text:
        text = text.replace("[runtime]", f"[runtime]\n{line}", 1)
    else:
        text += f"\n[runtime]\n{line}\n"
    toml.write_text(text, encoding="utf-8")
    return str(copy)


def one_run(
    name: str, data: Path, scratch: Path, model: str, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """A contender on a fresh copy of the seeded data; its result and stored labels."""
    copy = scratch / f"data-{name}"
    work = scratch / f"work-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(data, copy)
    work.mkdir()
    load_before = load_average()
    try:
        with serve_in_thread(copy) as emu:
            contender = run_autolabel if name == "autolabel" else run_sdk
            result = contender(emu, work, model, extra)
            result["labels"] = stored_labels(emu)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result["load_before"] = load_before
    result["load_after"] = load_average()
    problems = {k: v["problems"] for k, v in result["labels"].items() if v["problems"]}
    result["drafts_saved"] = sum(not v["problems"] for v in result["labels"].values())
    startup = result["startup"]
    print(
        f"  {name:<9} {result['wall_s']:7.1f} s  drafts {result['drafts_saved']}"
        f"  first download {startup.get('first_download_s', float('nan')):.2f} s"
        f"  peak RSS {result['peak_rss_mb']:.0f} MB"
        f"  load {load_before[0]:.2f} -> {result['load_after'][0]:.2f}"
        + (f"  PROBLEMS {problems}" if problems else ""),
        flush=True,
    )
    return result


def our_stages(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median busy seconds (and per-task seconds) per stage of our runs."""
    out: dict[str, dict[str, float]] = {}
    names = [s["stage"] for s in runs[0]["summary"]["stages"]]
    for name in names:
        rows = [s for r in runs for s in r["summary"]["stages"] if s["stage"] == name]
        out[name] = {
            "workers": rows[0]["workers"],
            "busy_s": statistics.median(s["busy_s"] for s in rows),
            "per_task_s": statistics.median(s["per_task_s"] for s in rows),
        }
    steps: dict[str, list[float]] = {}
    for r in runs:
        for task in r["summary"]["tasks"]:
            for step, seconds in task["seconds"].items():
                steps.setdefault(step, []).append(seconds)
    out["per_task_steps_median_s"] = {k: statistics.median(v) for k, v in steps.items()}
    out["run_wall_s_reported"] = {"median": statistics.median(r["summary"]["wall_s"] for r in runs)}
    return out


def sdk_steps(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median (over runs) of the baseline's total seconds per step."""
    totals: dict[str, list[float]] = {}
    for r in runs:
        t = r["timings"]
        sums: dict[str, float] = {
            "connect": t["connect_s"],
            "model_load": t["model_load_s"],
        }
        for task in t["tasks"]:
            for step, seconds in task["seconds"].items():
                sums[step] = sums.get(step, 0.0) + seconds
        sums["export_download_and_rest"] = sums.get("export", 0.0) - sums.get("dicom_to_nifti", 0)
        sums["process_start_and_imports"] = r["wall_s"] - t["wall_s"]
        for step, seconds in sums.items():
            totals.setdefault(step, []).append(seconds)
    return {k: statistics.median(v) for k, v in totals.items()}


def startup_runs(args: argparse.Namespace) -> None:
    """``args.startup`` runs of ``autolabel run`` on two small studies, each on a fresh
    emulator started before the clock: medians of the time to the first request, listing
    and image download (the emulator's start-up is not counted)."""
    shape = (args.memory_shape[0], args.memory_shape[1], args.memory_shape[2])
    data = seeded(args.cache, 2, shape)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for _ in range(args.startup):
            result = one_run("autolabel", data, Path(tmp), args.model)
            rows.append({**result["startup"], "load": result["load_before"][0]})
    keys = ("first_request_s", "first_listing_s", "first_download_s")
    medians = {k: statistics.median(r[k] for r in rows) for k in keys}
    print(f"\n| start-up (median of {len(rows)} runs) | s |")
    print("|---|---:|")
    for key in keys:
        print(f"| {key} | {medians[key]:.2f} |")
    print(f"load average before each run: {[r['load'] for r in rows]}")
    out = args.out.with_name("pipeline_startup.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"medians": medians, "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def memory(args: argparse.Namespace) -> None:
    """Peak RSS of ``autolabel run`` over ``args.memory`` small studies each (flat in N)."""
    shape = (args.memory_shape[0], args.memory_shape[1], args.memory_shape[2])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for count in args.memory:
            data = seeded(args.cache, count, shape)
            result = one_run("autolabel", data, Path(tmp), args.model)
            rows.append({
                "studies": count,
                "peak_rss_mb": result["peak_rss_mb"],
                "wall_s": result["wall_s"],
                "drafts_saved": result["drafts_saved"],
            })  # fmt: skip
    print("\n| studies | shape | peak RSS MB | wall s | drafts |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['studies']} | {'x'.join(map(str, shape))} | {row['peak_rss_mb']:.0f}"
            f" | {row['wall_s']:.1f} | {row['drafts_saved']} |"
        )
    out = args.out.with_name("pipeline_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shape": list(shape), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    if any(row["drafts_saved"] != row["studies"] for row in rows):
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=9)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_CARD, help="model card (name or path)")
    parser.add_argument("--tolerance", type=float, default=0.001)
    parser.add_argument(
        "--autocast", choices=("auto", "bf16", "fp16", "off"),
        help="run a copy of the card (a folder) with this [runtime] autocast",
    )  # fmt: skip
    parser.add_argument(
        "--run-args", nargs="+", default=[], metavar="ARG",
        help="more arguments for autolabel run (e.g. --run-args=--device=cuda)",
    )  # fmt: skip
    parser.add_argument(
        "--memory", type=int, nargs="+", metavar="N",
        help="instead: peak RSS of autolabel run on N small studies, for each N",
    )  # fmt: skip
    parser.add_argument("--memory-shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument(
        "--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
        help="run only these (e.g. autolabel alone for a 40-task throughput run)",
    )  # fmt: skip
    parser.add_argument(
        "--startup", type=int, metavar="N",
        help="instead: N runs of autolabel on 2 small studies; medians of the start-up times",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "autolabel-bench"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    if args.autocast:  # before anything is seeded
        check_autocast_card(args.model)
    shape = (args.shape[0], args.shape[1], args.shape[2])
    if args.memory:
        memory(args)
        return
    if args.startup:
        startup_runs(args)
        return

    data = seeded(args.cache, args.studies, shape)
    chosen = tuple(name for name in CONTENDERS if name in args.contenders)
    order = [chosen if i % 2 == 0 else chosen[::-1] for i in range(args.repeats)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    load_start = load_average()
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        model = (
            card_with_autocast(args.model, args.autocast, Path(tmp))
            if args.autocast
            else args.model
        )
        for i, pair in enumerate(order, 1):
            print(f"round {i}/{args.repeats}", flush=True)
            for name in pair:
                runs[name].append(one_run(name, data, Path(tmp), model, args.run_args))
    load_end = load_average()

    both = len(chosen) == 2
    agreement = (
        compare(runs["autolabel"][0]["labels"], runs["sdk"][0]["labels"], args.tolerance)
        if both
        else {"disagreements": [], "note": "one contender: labels not compared"}
    )
    repeatable = {
        name: all(r["labels"] == rs[0]["labels"] for r in rs[1:]) for name, rs in runs.items()
    }
    walls = {name: [r["wall_s"] for r in rs] for name, rs in runs.items()}
    medians = {name: statistics.median(w) for name, w in walls.items()}
    ratio = medians["sdk"] / medians["autolabel"] if both else float("nan")
    startup = {
        name: {
            key: statistics.median(r["startup"][key] for r in rs if key in r["startup"])
            for key in ("first_request_s", "first_listing_s", "first_download_s")
            if any(key in r["startup"] for r in rs)
        }
        for name, rs in runs.items()
    }
    rss = {name: statistics.median(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()}
    stages = our_stages(runs["autolabel"]) if "autolabel" in runs else {}
    steps = sdk_steps(runs["sdk"]) if "sdk" in runs else {}
    ok = (
        all(r["drafts_saved"] == args.studies for rs in runs.values() for r in rs)
        and not agreement["disagreements"]
    )

    print()
    print("| contender | median wall (s) | runs (s) | s/study | drafts saved |")
    print("|---|---:|---|---:|---:|")
    for name in chosen:
        drafts = ", ".join(str(r["drafts_saved"]) for r in runs[name])
        print(
            f"| {name} | {medians[name]:.1f} | {', '.join(f'{w:.1f}' for w in walls[name])} |"
            f" {medians[name] / args.studies:.2f} | {drafts} |"
        )
    if both:
        print(f"\n**ratio sdk / autolabel: {ratio:.2f}x** (target >= 6x)")
    print()
    print("| contender | first request s | first listing s | first download s | peak RSS MB "
          "| tasks/min |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name in chosen:
        row = startup[name]
        print(
            f"| {name} | {row.get('first_request_s', 0):.2f} | {row.get('first_listing_s', 0):.2f}"
            f" | {row.get('first_download_s', 0):.2f} | {rss[name]:.0f}"
            f" | {60 * args.studies / medians[name]:.1f} |"
        )
    print()
    print("| autolabel stage | workers | busy s (median) | per task s |")
    print("|---|---:|---:|---:|")
    for name, row in stages.items():
        if "busy_s" in row:
            print(f"| {name} | {row['workers']} | {row['busy_s']:.1f} | {row['per_task_s']:.2f} |")
    if "infer" in stages and "autolabel" in medians:
        busy = stages["infer"]["busy_s"] / medians["autolabel"]
        print(f"\nmodel busy: the infer stage {stages['infer']['busy_s']:.1f} s of"
              f" {medians['autolabel']:.1f} s wall, {busy:.0%}")  # fmt: skip
    print("\n| autolabel per-task step | median s |")
    print("|---|---:|")
    for step, seconds in stages.get("per_task_steps_median_s", {}).items():
        print(f"| {step} | {seconds:.2f} |")
    print("\n| sdk baseline step | total s (median) | per study s |")
    print("|---|---:|---:|")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds:.1f} | {seconds / args.studies:.2f} |")
    if both:
        print(
            f"\nlabels: {agreement['identical_voxels']}/{agreement['tasks']} tasks voxel-identical,"
            f" worst per-category count difference"
            f" {agreement['worst_relative_count_difference']:.2e} (tolerance {args.tolerance});"
            f" disagreements: {agreement['disagreements'] or 'none'}; repeatable: {repeatable}"
        )
    print(f"load average: start {load_start}, end {load_end}; {'OK' if ok else 'CHECKS FAILED'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "studies": args.studies,
        "autocast": args.autocast,
        "run_args": args.run_args,
        "model_busy_fraction": (
            stages["infer"]["busy_s"] / medians["autolabel"]
            if "infer" in stages and "autolabel" in medians
            else None
        ),
        "shape": list(shape),
        "mode": "draft",
        "repeats": args.repeats,
        "order": [list(p) for p in order],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average": {"start": load_start, "end": load_end},
        "wall_s": walls,
        "median_wall_s": medians,
        "ratio_sdk_over_autolabel": ratio,
        "model": args.model,
        "startup_median_s": startup,
        "peak_rss_mb_median": rss,
        "tasks_per_min": {name: 60 * args.studies / m for name, m in medians.items()},
        "checks_ok": ok,
        "agreement": agreement,
        "repeatable_labels": repeatable,
        "autolabel_stages": stages,
        "sdk_steps_total_s": steps,
        "runs": {
            name: [
                {
                    "wall_s": r["wall_s"],
                    "load_before": r["load_before"],
                    "load_after": r["load_after"],
                    "drafts_saved": r["drafts_saved"],
                    "startup": r["startup"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    **(
                        {"summary_stages": r["summary"]["stages"],
                         "summary_wall_s": r["summary"]["wall_s"],
                         "tasks": [{"name": t["task_name"], "status": t["status"],
                                    "seconds": t["seconds"]} for t in r["summary"]["tasks"]]}
                        if name == "autolabel"
                        else {"timings": r["timings"]}
                    ),
                }
                for r in rs
            ]
            for name, rs in runs.items()
        },
        "labels_voxels": {
            name: {task: v.get("voxels") for task, v in rs[0]["labels"].items()}
            for name, rs in runs.items()
        },
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

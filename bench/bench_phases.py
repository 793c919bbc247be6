"""Benchmark (issue 16): each phase of a task against its floor, in one run, on the same data.

One emulator (a fresh copy of ``--studies`` seeded CT studies of ``--shape``, DICOM) and
one pass over its tasks. For every task, the floor and the product are timed back to back,
alternating which goes first:

* **fetch** -- floor: a plain ``requests`` download of the task's files (URLs got before
  the timer; the faster of a serial loop and ``--download-threads`` threads) plus the
  fastest decode we have, :func:`autolabel.imaging.load_dicom_series`; and the protocol
  floor: that plus the one ``taskSDK`` read any client needs for the items and their URLs.
  Product: the local run's fetch phase (``LocalSchedule._fetch``: re-read and guard,
  download from the URLs the read came with, checksum, headers parsed as files land,
  decode, the ``fetched`` ledger commit).
* **write** -- floor: :func:`autolabel.imaging.write_label_nifti` of the task's label map
  plus one plain PUT of the same bytes to a presigned upload URL (presigned before the
  timer); and the protocol floor: the label file plus the four requests any client needs
  to save it (server conversion, presign, PUT, the saving mutation), sent with our client
  to a spare task the product leaves alone. Product: the local run's write phase (``LocalSchedule._write``: label file,
  payload, ledger records and intent, server conversion, upload, re-read, the saving
  mutation); previews go to the run's own preview worker, whose time is printed apart
  (it renders beside the product's write, sharing the CPU: ``--previews off`` times the
  write phase alone).

The emulator runs in its own process by default (``--emulator process``), as RedBrick is
remote: in the bench's process (``--emulator thread``) its request handling shares one
interpreter lock with the downloads and the header parsing being measured.
``--latency-ms`` delays every request (an emulator fault rule) as a remote RedBrick would.

The infer phase runs between them (the card's model; its own overhead is
``bench_sliding_window.py``'s and the infer bench's business). Medians per task, their
ratio (product / floor), and the load average go to stdout and ``bench/results/phases.json``.
Every task must end ``draft_saved`` with exactly one accepted write.

    .venv/bin/python bench/bench_phases.py [--studies 6] [--shape 512 512 160] [--model CARD]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import DEFAULT_CARD, load_average, seeded  # noqa: E402

import autolabel  # noqa: E402
from autolabel.emulator import (  # noqa: E402
    Connection,
    Emulator,
    EmulatorHandle,
    load_faults,
    serve_in_thread,
)
from autolabel.imaging import load_dicom_series, write_label_nifti  # noqa: E402
from autolabel.inference import load_model  # noqa: E402
from autolabel.pipeline import open_books  # noqa: E402
from autolabel.pipeline.book import RunBook  # noqa: E402
from autolabel.pipeline.local import LocalSchedule, _Job  # noqa: E402
from autolabel.pipeline.options import RunOptions  # noqa: E402
from autolabel.pipeline.previews import PreviewWorker  # noqa: E402
from autolabel.pipeline.steps import TaskSteps  # noqa: E402
from autolabel.redbrick import Project, Task  # noqa: E402


@contextlib.contextmanager
def served(
    data: Path, where: str, latency_ms: float = 0.0
) -> Iterator[tuple[Connection, Callable[[], dict[str, int]]]]:
    """Serve ``data`` in this process's thread or in a child process; yield its connection
    and a function giving the accepted writes per task (read once the server stopped).
    ``latency_ms`` delays every request (GraphQL and storage) as a remote service would."""
    faults = (
        [{"target": "*", "kind": "delay", "delay_s": latency_ms / 1000, "times": None}]
        if latency_ms > 0
        else []
    )
    if where == "thread":
        with serve_in_thread(data, faults=load_faults(faults)) as emu:
            yield emu.connection, emu.write_counts
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "autolabel", "emulator", "serve", "--data", str(data)]
    if faults:
        command += ["--faults", json.dumps(faults)]
    child = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    stopped: list[bool] = []

    def counts() -> dict[str, int]:
        assert stopped, "write counts are read once the emulator has stopped"
        emulator = Emulator(data)
        try:
            return EmulatorHandle(emulator, Connection.load(data)).write_counts()
        finally:
            emulator.close()

    try:
        assert child.stdout is not None
        if b"emulator serving" not in child.stdout.readline():
            raise RuntimeError("the emulator did not start")
        yield Connection.load(data), counts
    finally:
        child.terminate()
        child.wait(timeout=30)
        stopped.append(True)


def _get(session: requests.Session, url: str, path: Path) -> None:
    with session.get(url, stream=True, timeout=120) as response:
        response.raise_for_status()
        with open(path, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)


def floor_fetch(
    project: Project, task: Task, folder: Path, threads: int, session: requests.Session
) -> dict[str, float]:
    """Plain download (serial and threaded; the faster counts) + ``load_dicom_series``; and
    the protocol floor: that plus the one task read any client needs for the item URLs."""
    began = time.perf_counter()
    fresh = project.get_task(task.task_id)  # taskSDK: items and their URLs (itemsPresigned)
    read_s = time.perf_counter() - began
    urls = fresh.item_urls() or project.client.presign_items(
        project.org_id, fresh.storage_id or "", fresh.items
    )
    out: dict[str, float] = {"read_s": read_s}
    for name, workers in (("serial", 1), ("threads", threads)):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        paths = [folder / f"{n:05d}.dcm" for n in range(len(urls))]
        began = time.perf_counter()
        if workers == 1:
            for url, path in zip(urls, paths, strict=True):
                _get(session, str(url), path)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(
                    pool.map(
                        lambda job: _get(session, str(job[0]), job[1]),
                        zip(urls, paths, strict=True),
                    )
                )
        out[f"download_{name}_s"] = time.perf_counter() - began
    began = time.perf_counter()
    load_dicom_series(paths)
    out["decode_s"] = time.perf_counter() - began
    out["download_s"] = min(out["download_serial_s"], out["download_threads_s"])
    out["floor_s"] = out["download_s"] + out["decode_s"]
    out["protocol_floor_s"] = read_s + out["floor_s"]
    shutil.rmtree(folder, ignore_errors=True)
    return out


def floor_write(
    project: Project, job: _Job, folder: Path, session: requests.Session, spare: Task
) -> dict[str, float]:
    """``write_label_nifti`` of the label map + one PUT of its bytes (the strict floor);
    and the protocol floor: the label file + the requests any client sends to save it
    (server conversion, presign, PUT, the saving mutation), sent plainly with our client
    to the ``spare`` task, which the product run leaves alone."""
    assert job.fetched is not None
    volume = job.fetched.series[0].volume
    presigned, _ = project.client.presign_uploads(
        project.org_id,
        project.project_id,
        segmentation_files=[f"labels/bench/{uuid.uuid4()}/0.nii.gz"],
    )
    url = presigned[0]["presignedUrl"]
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    path = write_label_nifti(job.label_maps[0], volume, folder / "floor.nii.gz")
    label_s = time.perf_counter() - began
    began = time.perf_counter()
    response = session.put(
        url, data=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    )
    response.raise_for_status()
    put_s = time.perf_counter() - began
    entry = {"name": "floor", "segmentations": str(path), "segmentMap": {"1": "Body"}}
    began = time.perf_counter()
    uploaded = project.upload_labels(spare.task_id, [entry])
    project.commit_labels(uploaded, "Label", finalize=False)
    save_s = time.perf_counter() - began
    return {
        "label_file_s": label_s,
        "put_s": put_s,
        "floor_s": label_s + put_s,
        "protocol_save_s": save_s,
        "protocol_floor_s": label_s + save_s,
    }


def product_phase(call: Any, job: _Job) -> float:
    began = time.perf_counter()
    call(job)
    return time.perf_counter() - began


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = (args.shape[0], args.shape[1], args.shape[2])
    data = seeded(args.cache, args.studies, shape)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(data, copy)
        with (
            served(copy, args.emulator, args.latency_ms) as (emu, write_counts),
            requests.Session() as session,
        ):
            project = autolabel.open_project(
                url=emu.url, org_id=emu.org_id, project_id=emu.project_id, api_key=emu.api_key
            )
            model = load_model(args.model, device="cpu")
            listed = list(project.list_assigned_tasks("Label"))
            spare, chosen = listed[-1], tuple(t.task_id for t in listed[:-1])
            options = RunOptions(
                model=args.model,
                device="cpu",
                work_dir=Path(tmp) / "work",
                task_ids=chosen,
                previews=args.previews == "on",
            )
            steps = TaskSteps(project, model, options)
            previews = PreviewWorker()
            steps.previews = previews
            with open_books(options, None) as ledger:
                book = RunBook(project, steps.key, options, ledger, None)
                handle = book.begin(("bench_phases",))
                schedule = LocalSchedule(book, steps)
                for n, task in enumerate(book.tasks()):
                    job = _Job(book.start(task))
                    scratch = Path(tmp) / "floor" / task.task_id
                    row: dict[str, Any] = {"task": task.name, "load": load_average()[0]}
                    if n % 2 == 0:
                        row["fetch_floor"] = floor_fetch(
                            project, task, scratch, args.download_threads, session
                        )
                        row["fetch_product_s"] = product_phase(schedule._fetch, job)
                    else:
                        row["fetch_product_s"] = product_phase(schedule._fetch, job)
                        row["fetch_floor"] = floor_fetch(
                            project, task, scratch, args.download_threads, session
                        )
                    row["infer_s"] = product_phase(schedule._infer, job)
                    floor = floor_write(project, job, scratch, session, spare)
                    row["write_product_s"] = product_phase(schedule._write, job)
                    row["write_floor"] = floor
                    row["status"] = job.flow.status
                    rows.append(row)
                    print(
                        f"  {task.name}: fetch {row['fetch_product_s']:.2f} s vs floor "
                        f"{row['fetch_floor']['floor_s']:.2f} s; write "
                        f"{row['write_product_s']:.2f} s vs floor {floor['floor_s']:.2f} s;"
                        f" {row['status']}; load {row['load']:.2f}",
                        flush=True,
                    )
                began = time.perf_counter()
                previews.drain()
                preview_wait_s = time.perf_counter() - began
                handle.finish("finished")
        writes = write_counts()
        once = all(writes.get(task_id, 0) == 1 for task_id in chosen)
    return {"rows": rows, "preview_drain_s": preview_wait_s, "exactly_once": once}


def _latency(text: str) -> float:
    """``--latency-ms``: a finite number of milliseconds, at least 0 (a negative delay would
    be no delay, recorded as a latency the run never had)."""
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of milliseconds >= 0, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    parser.add_argument("--model", default=DEFAULT_CARD)
    parser.add_argument("--download-threads", type=int, default=4)
    parser.add_argument("--emulator", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--previews", choices=("on", "off"), default="on",
        help="off: no preview renders beside the product's writes (the write phase alone)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-ms", type=_latency, default=0.0, help="delay every request, as a remote service"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "autolabel-bench"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "phases.json")
    args = parser.parse_args()
    load_start = load_average()
    result = run(args)
    rows = result["rows"]
    fetch_p = statistics.median(r["fetch_product_s"] for r in rows)
    fetch_f = statistics.median(r["fetch_floor"]["floor_s"] for r in rows)
    fetch_pf = statistics.median(r["fetch_floor"]["protocol_floor_s"] for r in rows)
    write_p = statistics.median(r["write_product_s"] for r in rows)
    write_f = statistics.median(r["write_floor"]["floor_s"] for r in rows)
    write_pf = statistics.median(r["write_floor"]["protocol_floor_s"] for r in rows)
    parts = {
        "task read": statistics.median(r["fetch_floor"]["read_s"] for r in rows),
        "download": statistics.median(r["fetch_floor"]["download_s"] for r in rows),
        "decode": statistics.median(r["fetch_floor"]["decode_s"] for r in rows),
        "label file": statistics.median(r["write_floor"]["label_file_s"] for r in rows),
        "put": statistics.median(r["write_floor"]["put_s"] for r in rows),
    }
    ok = result["exactly_once"] and all(r["status"] == "draft_saved" for r in rows)
    print("\n| phase | product s/task (median) | floor s/task (median) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| fetch | {fetch_p:.3f} | {fetch_f:.3f} | **{fetch_p / fetch_f:.2f}x** |")
    print(
        f"| fetch vs the protocol floor (task read + download + decode) | {fetch_p:.3f} |"
        f" {fetch_pf:.3f} | **{fetch_p / fetch_pf:.2f}x** |"
    )
    print(f"| write | {write_p:.3f} | {write_f:.3f} | **{write_p / write_f:.2f}x** |")
    print(
        f"| write vs the protocol floor (file + convert, presign, PUT, save) | {write_p:.3f}"
        f" | {write_pf:.3f} | **{write_p / write_pf:.2f}x** |"
    )
    print(
        "\nfloor parts (median s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
        + f"; infer {statistics.median(r['infer_s'] for r in rows):.3f} s/task;"
        f" previews rendered off the write path, {result['preview_drain_s']:.2f} s left at the end"
    )
    print(
        f"load average: start {load_start}, end {load_average()}; exactly once: "
        f"{result['exactly_once']}; {'OK' if ok else 'CHECKS FAILED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "studies": args.studies,
        "emulator": args.emulator,
        "latency_ms": args.latency_ms,
        "previews": args.previews,
        "shape": list(args.shape),
        "model": args.model,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_average()},
        "fetch": {"product_s": fetch_p, "floor_s": fetch_f, "ratio": fetch_p / fetch_f},
        "fetch_protocol": {
            "product_s": fetch_p,
            "floor_s": fetch_pf,
            "ratio": fetch_p / fetch_pf,
        },
        "write": {"product_s": write_p, "floor_s": write_f, "ratio": write_p / write_f},
        "write_protocol": {
            "product_s": write_p,
            "floor_s": write_pf,
            "ratio": write_p / write_pf,
        },
        "floor_parts_s": parts,
        "checks_ok": ok,
        **result,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

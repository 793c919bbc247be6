"""Benchmark: the pipeline on Ray actors.

Three parts, each against emulators served by separate processes (``autolabel emulator
serve``), so that the driver's figures are the driver's own:

* ``throughput`` -- the same seeded project (``--studies`` phantoms of ``--shape``) written
  as drafts by a local run, by 1 CPU actor and by 2 CPU actors, alternating, each on a
  fresh copy of the data; medians of ``--repeats`` of the run's wall time (after the actors
  have loaded the model) and of the wall time including Ray actor start-up.
* ``memory`` -- a project of ``--tasks`` tiny studies (8x8x8): the driver's resident
  memory growth while it streams the listing, while it materialises the listing
  (``list(...)``), and over a whole Ray dry run (2 actors) that streams it: RSS sampled
  every 20 ms, each variant in its own process. For the run, the share of the growth that
  is the summary's own per-task records (``RunSummary.outcomes``, kept by design, as in
  a local run) is measured too.
* ``gpu`` -- one GPU actor (``num_gpus=1``, ``--gpu-cpus`` CPUs for download and decode)
  against the local run on CUDA, with ``phantom-unet`` when its weights are there (else
  ``ct-threshold``). Needs CUDA; results go to ``results/ray_gpu.json`` (and ``$OUT``).

    .venv/bin/python bench/bench_ray.py [throughput|memory|all] [--repeats 3]
    .venv/bin/python bench/bench_ray.py gpu

``all`` (the default) runs throughput and memory and writes ``results/ray.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# -- emulator in its own process ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(template: Path, scratch: Path) -> Iterator[Any]:
    """A fresh copy of ``template`` served by ``autolabel emulator serve``; yields the
    connection settings."""
    from autolabel.settings import ConnectionSettings

    data = scratch / f"data-{time.monotonic_ns()}"
    shutil.copytree(template, data)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "autolabel", "emulator", "serve", "--data", str(data),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)
        saved = json.loads((data / "connection.json").read_text())
        yield ConnectionSettings(
            url=f"http://localhost:{port}",
            org_id=saved["org_id"],
            project_id=saved["project_id"],
            api_key=saved["api_key"],
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def seeded(scratch: Path, studies: int, shape: tuple[int, int, int]) -> Path:
    from autolabel.emulator import seed

    folder = scratch / f"template-{studies}-{'x'.join(map(str, shape))}"
    if not folder.exists():
        began = time.perf_counter()
        seed(folder, studies=studies, shape=shape)
        print(f"seeded {studies} studies of {shape} in {time.perf_counter() - began:.0f} s")
    return folder


# -- (a) throughput -------------------------------------------------------------------------


def one_run(connection: Any, config: str, work: Path, model: str, device: str) -> dict[str, Any]:
    from autolabel.pipeline import RunOptions, run
    from autolabel.pipeline.ray import RayOptions, run_on_ray
    from autolabel.redbrick import get_project

    options = RunOptions(work_dir=work, previews=False)
    began = time.perf_counter()
    if config == "local":
        from autolabel.inference import load_model

        loaded = load_model(model, device=device)
        with get_project(
            connection.org_id, connection.project_id, connection.api_key, url=connection.url
        ) as project:
            summary = run(project, loaded, options)
    else:
        actors = int(config.split("-")[1])
        cluster = RayOptions(actors=actors, cpus_per_actor=1.0)
        summary = run_on_ray(connection, model, options, cluster, device=device)
    total = time.perf_counter() - began
    if len(summary.done) != len(summary.outcomes) or not summary.outcomes:
        raise RuntimeError(f"{config}: not every task was written: {summary.to_dict()['counts']}")
    return {
        "tasks": len(summary.outcomes),
        "run_s": summary.wall_s,
        "total_s": total,
        "workers": [w.to_dict() for w in summary.workers],
    }


def throughput(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import ray

    shape = tuple(args.shape)
    template = seeded(scratch, args.studies, shape)  # type: ignore[arg-type]
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    configs = ["local", "ray-1", "ray-2"]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    try:
        for repeat in range(args.repeats + 1):  # the first round warms caches up
            order = configs if repeat % 2 == 0 else configs[::-1]
            for config in order:
                with served(template, scratch) as connection:
                    result = one_run(
                        connection, config, scratch / f"work-{time.monotonic_ns()}",
                        "ct-threshold", "cpu",
                    )  # fmt: skip
                if repeat:
                    runs[config].append(result)
                print(f"  round {repeat} {config}: run {result['run_s']:.2f} s, "
                      f"total {result['total_s']:.2f} s")  # fmt: skip
    finally:
        ray.shutdown()
    out: dict[str, Any] = {"studies": args.studies, "shape": list(shape), "configs": {}}
    for config, results in runs.items():
        run_s = statistics.median(r["run_s"] for r in results)
        out["configs"][config] = {
            "median_run_s": round(run_s, 3),
            "median_total_s": round(statistics.median(r["total_s"] for r in results), 3),
            "tasks_per_s": round(args.studies / run_s, 2),
            "runs_s": [round(r["run_s"], 3) for r in results],
        }
    one, two = out["configs"]["ray-1"], out["configs"]["ray-2"]
    out["speedup_2_vs_1_actor"] = round(one["median_run_s"] / two["median_run_s"], 2)
    return out


# -- (b) memory -----------------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Samples this process's resident memory every 20 ms in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, tasks done)
        self.done = 0
        self._stop = threading.Event()
        self._began = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.perf_counter() - self._began, _rss_kib(), self.done))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_probe(variant: str, connection: Any, scratch: Path) -> dict[str, Any]:
    """One variant, in this (fresh) process; see the module docstring."""
    from autolabel.pipeline import RunOptions
    from autolabel.pipeline.fetch import select_tasks
    from autolabel.pipeline.ray import RayOptions, run_on_ray
    from autolabel.redbrick import get_project

    if variant.startswith("list"):
        with get_project(
            connection.org_id, connection.project_id, connection.api_key, url=connection.url
        ) as project:
            project.current_user_id  # noqa: B018 -- the first query, before the baseline
            base = _rss_kib()
            with Sampler() as sampler:
                if variant == "list-stream":
                    count = sum(1 for _ in select_tasks(project, "Label"))
                else:
                    tasks = list(select_tasks(project, "Label"))
                    count = len(tasks)
            peak = max(s[1] for s in sampler.samples)
            return {"tasks": count, "baseline_kib": base, "peak_growth_kib": peak - base}
    sampler = Sampler()
    baseline: list[int] = []

    class Listener:
        def on_phase(self, task_id: str, phase: str) -> None:
            if phase == "queued" and not baseline:
                baseline.append(_rss_kib())

        def on_task(self, outcome: Any) -> None:
            sampler.done += 1

    options = RunOptions(mode="dry-run", work_dir=scratch / "work-mem", previews=False)
    with sampler:
        summary = run_on_ray(
            connection, "ct-threshold", options, RayOptions(actors=2), device="cpu",
            listener=Listener(),
        )  # fmt: skip
    total = len(summary.outcomes)
    base = baseline[0]
    kept = _deep_size(summary.outcomes) // 1024
    after = [s for s in sampler.samples if s[2] > 0]
    growth_at = {}
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
        upto = [s[1] for s in after if s[2] <= fraction * total]
        growth_at[f"{int(fraction * 100)}%"] = (max(upto) if upto else base) - base
    return {
        "tasks": total,
        "done": len(summary.done),
        "run_s": round(summary.wall_s, 1),
        "baseline_kib": base,
        "peak_growth_kib": max(s[1] for s in after) - base,
        "growth_kib_by_tasks_done": growth_at,
        "summary_outcomes_kib": kept,
    }


def _deep_size(value: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``value`` and everything it refers to (objects counted once)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, list | tuple | set):
        size += sum(_deep_size(v, seen) for v in value)
    elif hasattr(value, "__dict__"):
        size += _deep_size(vars(value), seen)
    return size


def memory(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    template = seeded(scratch, args.tasks, (8, 8, 8))
    out: dict[str, Any] = {"tasks": args.tasks, "shape": [8, 8, 8], "variants": {}}
    for variant in ("list-stream", "list-materialise", "ray-stream"):
        with served(template, scratch) as connection:
            probe = subprocess.run(
                [sys.executable, __file__, "_probe", variant, json.dumps({
                    "url": connection.url, "org_id": connection.org_id,
                    "project_id": connection.project_id, "api_key": connection.api_key,
                }), str(scratch)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        if probe.returncode != 0:
            raise RuntimeError(f"{variant}: {probe.stderr[-2000:]}")
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        out["variants"][variant] = result
        print(f"  {variant}: {result}")
    return out


# -- (c) GPU --------------------------------------------------------------------------------


def gpu(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import ray
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu: no CUDA device")
    model = "phantom-unet" if (ROOT / "models/phantom-unet/model.pt").is_file() else "ct-threshold"
    template = seeded(scratch, args.studies, tuple(args.shape))  # type: ignore[arg-type]
    ray.init(include_dashboard=False, log_to_driver=False)
    results: dict[str, list[float]] = {"local-cuda": [], "ray-1-gpu-actor": []}
    try:
        from autolabel.pipeline.ray import RayOptions, run_on_ray

        for repeat in range(args.repeats + 1):
            for config in ("local-cuda", "ray-1-gpu-actor"):
                with served(template, scratch) as connection:
                    work = scratch / f"work-{time.monotonic_ns()}"
                    if config == "local-cuda":
                        result = one_run(connection, "local", work, model, "cuda")
                        run_s = result["run_s"]
                    else:
                        from autolabel.pipeline import RunOptions

                        cluster = RayOptions(
                            actors=1, gpus_per_actor=1.0, cpus_per_actor=args.gpu_cpus
                        )
                        summary = run_on_ray(
                            connection, model, RunOptions(work_dir=work, previews=False),
                            cluster, device="cuda",
                        )  # fmt: skip
                        run_s = summary.wall_s
                if repeat:
                    results[config].append(run_s)
                print(f"  round {repeat} {config}: {run_s:.2f} s")
    finally:
        ray.shutdown()
    medians = {k: round(statistics.median(v), 3) for k, v in results.items()}
    return {
        "model": model,
        "studies": args.studies,
        "shape": list(args.shape),
        "device": torch.cuda.get_device_name(0),
        "median_run_s": medians,
        "tasks_per_s": {k: round(args.studies / v, 2) for k, v in medians.items()},
    }


# -- main -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import ray

    return {
        "python": platform.python_version(),
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        from autolabel.settings import ConnectionSettings

        variant, connection, scratch = sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(memory_probe(variant, ConnectionSettings(**connection), scratch)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "part", nargs="?", default="all", choices=["all", "throughput", "memory", "gpu"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--gpu-cpus", type=float, default=4.0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        scratch = Path(folder)
        if args.part == "gpu":
            args.shape = args.shape if args.shape != [64, 64, 48] else [128, 128, 96]
            result = {"machine": machine(), "gpu": gpu(args, scratch)}
            path = RESULTS / "ray_gpu.json"
        else:
            path = RESULTS / "ray.json"
            # One part alone updates its own key and keeps the other part's last result.
            result = json.loads(path.read_text()) if path.is_file() and args.part != "all" else {}
            result["machine"] = machine()
            if args.part in ("all", "throughput"):
                result["throughput"] = throughput(args, scratch)
            if args.part in ("all", "memory"):
                result["memory"] = memory(args, scratch)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if os.environ.get("OUT"):
        shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: one warm replica against one per device (``--device cuda:0,cuda:1``).

The phantom-unet card predicts ``--volumes`` phantom CTs, as the run's infer phase does:
one thread per replica taking volumes from a shared queue. Reports volumes per second for
one device and for the pool, the speed-up, and whether the labels agree.

    .venv/bin/python bench/bench_replicas.py --devices cuda:0,cuda:1 [--volumes 8]

Exits 0 with a "skipped" line when fewer devices than listed are present. Writes
``bench/results/replicas_<n>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from autolabel.emulator.phantom import make_phantom
from autolabel.inference import load_model
from autolabel.inference.replicas import ReplicaPool, split_devices
from autolabel.records import Volume

ROOT = Path(__file__).resolve().parents[1]


def _volumes(count: int, shape: tuple[int, int, int]) -> list[Volume]:
    out = []
    for seed in range(count):
        phantom = make_phantom(shape, seed=seed)
        out.append(Volume(array=phantom.hu, affine=phantom.affine_lps, modality="CT"))
    return out


def _timed(model: object, volumes: list[Volume], workers: int) -> tuple[float, list[np.ndarray]]:
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(volumes)):
        todo.put(index)
    labels: list[np.ndarray] = [np.empty(0)] * len(volumes)

    def work() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            labels[index] = model.predict(volumes[index])  # type: ignore[attr-defined]

    began = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128))
    args = parser.parse_args()
    devices = split_devices(args.devices)
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda and torch.cuda.device_count() < len(cuda):
        print(f"replicas: skipped ({torch.cuda.device_count()} CUDA device(s), {len(cuda)} listed)")
        return 0
    volumes = _volumes(args.volumes, tuple(args.shape))
    one = load_model("phantom-unet", device=devices[0])
    pool = load_model("phantom-unet", device=args.devices)
    assert isinstance(pool, ReplicaPool)
    _timed(one, volumes[:1], 1)  # warm-up
    _timed(pool, volumes[: len(devices)], len(devices))
    single_s, single = _timed(one, volumes, 1)
    pool_s, pooled = _timed(pool, volumes, len(devices))
    result = {
        "devices": devices,
        "volumes": args.volumes,
        "shape": list(args.shape),
        "one_device_volumes_per_s": args.volumes / single_s,
        "pool_volumes_per_s": args.volumes / pool_s,
        "speedup": single_s / pool_s,
        "per_replica_calls": pool.calls,
        "labels_identical": all(np.array_equal(a, b) for a, b in zip(single, pooled, strict=True)),
        "host": platform.node(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    }
    out = ROOT / "bench" / "results" / f"replicas_{len(devices)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

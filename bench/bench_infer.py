"""Benchmark: the infer phase's overhead beyond the model call itself.

Issue #16: validation, copies and casts around a model's ``predict`` must cost at most
0.1 s per 512x512x160 volume. On the same volume (a synthetic trunk CT, int16, Fortran
order as the DICOM and NIfTI readers give it), alternating after a warm-up:

* ``bare``: a card's own predict called directly (the floor);
* ``product``: the same card through the path every run takes -- ``load_model`` (the
  python runner: modality check, :func:`~autolabel.inference.spec.validate_output`) behind
  :func:`~autolabel.inference.guard.guard_model` (a predict thread with its time limit).

Two python cards: ``ct-threshold`` (seconds of scipy per volume, so its overhead is read
against load noise) and ``two-threshold`` (two HU comparisons, the docs-style model of
bench_pipeline's baseline, written to a temporary folder): with a model call of a fraction
of a second, the overhead stands out. Prints both medians and their difference for each, in
wall seconds and in CPU seconds of the process (on a loaded machine the wall time is mostly
the wait for a core; the CPU time is the work), and checks the label maps agree.

    .venv/bin/python bench/bench_infer.py [--slices 160] [--repeats 5]

Writes ``bench/results/infer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.emulator.phantom import make_phantom
from autolabel.inference import load_model, read_card
from autolabel.inference.card import find_card
from autolabel.inference.guard import guard_model
from autolabel.inference.python_card import import_entry
from autolabel.records import Volume

ROOT = Path(__file__).resolve().parents[1]
_TARGET_S = 0.1  # issue #16: at most 0.1 s of overhead per 512x512x160 volume


def make_volume(slices: int) -> Volume:
    """A 512x512x``slices`` int16 CT volume in F order, LPS index axes."""
    phantom = make_phantom((512, 512, slices), seed=16, fov_mm=(400.0, 400.0, slices * 1.0))
    affine = np.diag([-phantom.spacing[0], -phantom.spacing[1], phantom.spacing[2], 1.0])
    array = np.asfortranarray(phantom.hu)
    array.flags.writeable = False  # as the readers give it: the volume owns its array
    return Volume(array=array, affine=affine, modality="CT", source="bench volume")


_TWO_THRESHOLD = """
import numpy as np

def predict(volume):
    hu = volume.array
    labels = (hu > -950).astype(np.uint8)
    labels[hu >= 226] = 2
    return labels
"""


def two_threshold_card(folder: Path) -> Path:
    """A python card of two HU thresholds (1 body, 2 bone) in ``folder``."""
    (folder / "two_threshold.py").write_text(_TWO_THRESHOLD)
    card = folder / "model.toml"
    card.write_text(
        'name = "two-threshold"\nversion = "1"\nkind = "python"\n'
        'entry = "two_threshold:predict"\nmodality = "CT"\n[labels]\n1 = "body"\n2 = "bone"\n'
    )
    return card


def measure(card_path: Path, volume: Volume, repeats: int) -> dict[str, Any]:
    """Alternating medians of the bare call and the product's predict for one card."""
    card = read_card(card_path)
    entry: Any = import_entry(card)
    bare = entry(card=card, device="cpu").predict if isinstance(entry, type) else entry
    product = guard_model(load_model(card_path, device="cpu"))
    methods: dict[str, Callable[[Volume], Any]] = {"bare": bare, "product": product.predict}
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    labels: dict[str, Any] = {}
    for call in methods.values():  # warm-up
        call(volume)
    for _ in range(repeats):
        for name, call in methods.items():
            labels.pop(name, None)  # each call allocates afresh, as in a run
            started, started_cpu = time.perf_counter(), time.process_time()
            labels[name] = call(volume)
            cpu[name].append(round(time.process_time() - started_cpu, 4))
            times[name].append(round(time.perf_counter() - started, 4))
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    # Per-run pairs (product minus the bare call just before it) are less exposed to load.
    paired = statistics.median(p - b for p, b in zip(times["product"], times["bare"], strict=True))
    return {
        "model": card.name,
        "seconds": times,
        "median_s": medians,
        "overhead_s": round(medians["product"] - medians["bare"], 4),
        "overhead_paired_median_s": round(paired, 4),
        # CPU seconds of this process (every thread): what the work costs, not the wait
        # for a core on a loaded machine.
        "cpu_seconds": cpu,
        "median_cpu_s": cpu_medians,
        "overhead_cpu_s": round(cpu_medians["product"] - cpu_medians["bare"], 4),
        "labels_equal": bool(np.array_equal(labels["bare"], labels["product"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    volume = make_volume(args.slices)
    with tempfile.TemporaryDirectory(prefix="autolabel-bench-infer-") as folder:
        cards = [find_card("ct-threshold"), two_threshold_card(Path(folder))]
        models = [measure(card, volume, args.repeats) for card in cards]
    result = {
        "benchmark": "infer_overhead",
        "shape": list(volume.shape),
        "dtype": str(volume.array.dtype),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "models": models,
        "target_overhead_s": _TARGET_S,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for row in models:
        medians = row["median_s"]
        print(
            f"{row['model']} on 512x512x{args.slices}: bare model call {medians['bare']:.3f} s, "
            f"product predict {medians['product']:.3f} s, overhead {row['overhead_s']:.3f} s "
            f"(paired median {row['overhead_paired_median_s']:.3f} s); CPU time: bare "
            f"{row['median_cpu_s']['bare']:.3f} s, product {row['median_cpu_s']['product']:.3f} s, "
            f"overhead {row['overhead_cpu_s']:.3f} s (target <= {_TARGET_S} s)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "infer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

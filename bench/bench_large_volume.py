"""Benchmark: peak memory and time of ``autolabel predict`` on large CT volumes.

Issue #16: a 512x512xN CT (int16) through ``ct-threshold``, a model that needs no float
copy of the volume. Each run is a fresh ``autolabel predict`` process (the CLI, defaults:
NIfTI in, label ``.nii.gz`` and PNG preview out) whose peak resident memory is read from
the kernel when it ends (``os.wait4``: the child's own ``ru_maxrss``, nothing of this
process). The floor beside it: the volume's own bytes (the image has to be in memory
once); the target is a peak of at most 4x that.

The input is a synthetic trunk phantom (:func:`autolabel.emulator.phantom.make_phantom`,
512x512x100) repeated along the slice axis to N slices and written as an uncompressed
NIfTI slab by slab (so this process never holds the whole volume).

    .venv/bin/python bench/bench_large_volume.py [--slices 600 800] [--repeats 3]

Writes ``bench/results/large_volume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from autolabel.emulator.phantom import make_phantom

ROOT = Path(__file__).resolve().parents[1]
_SLAB = 100  # slices of the phantom repeated along k
_TARGET = 4.0  # issue #16: peak RSS at most 4x the volume


def write_volume(path: Path, slices: int, seed: int = 16) -> int:
    """A 512x512x``slices`` int16 CT NIfTI at ``path``; returns the voxel data's bytes."""
    phantom = make_phantom((512, 512, _SLAB), seed=seed, fov_mm=(400.0, 400.0, 80.0))
    slab = np.asfortranarray(phantom.hu)
    spacing = phantom.spacing
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS index order in RAS
    header: Any = nib.Nifti1Header()
    header.set_data_shape((512, 512, slices))
    header.set_data_dtype(np.int16)
    header.set_qform(affine, 1)
    header.set_sform(affine, 1)
    header.set_data_offset(352)
    with path.open("wb") as stream:
        header.write_to(stream)
        stream.write(b"\0" * (352 - stream.tell()))
        written = 0
        while written < slices:
            take = min(_SLAB, slices - written)
            # F order: slice k is one contiguous block, so slabs append in order.
            stream.write(np.asfortranarray(slab[:, :, :take]).tobytes(order="F"))
            written += take
    return 512 * 512 * slices * 2


def predict_once(source: Path, out: Path) -> dict[str, Any]:
    """One ``autolabel predict`` process: wall seconds, its peak RSS, the model's seconds."""
    command = [
        sys.executable, "-m", "autolabel", "predict", str(source), "--model", "ct-threshold",
        "--out", str(out), "--device", "cpu", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        # wait4 reaps this child and gives its own rusage: the peak RSS of that process only
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"autolabel predict failed: {stderr.read().decode()[-2000:]}")
        report = json.loads(stdout.read())
    peak_kb = usage.ru_maxrss  # kilobytes on Linux
    return {"wall_s": seconds, "peak_rss_mb": peak_kb / 1024.0, "model_s": report["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, nargs="+", default=[600, 800])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="autolabel-large-") as folder:
        for slices in args.slices:
            source = Path(folder) / f"ct_{slices}.nii"
            volume_bytes = write_volume(source, slices)
            runs = [
                predict_once(source, Path(folder) / f"labels_{slices}.nii.gz")
                for _ in range(args.repeats)
            ]
            volume_mb = volume_bytes / 2**20
            peak = statistics.median(r["peak_rss_mb"] for r in runs)
            row = {
                "shape": [512, 512, slices],
                "volume_mb": round(volume_mb, 1),
                "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs],
                "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                "median_model_s": round(statistics.median(r["model_s"] for r in runs), 2),
                "median_peak_rss_mb": round(peak, 1),
                "peak_over_volume": round(peak / volume_mb, 2),
                "target_peak_over_volume": _TARGET,
            }
            results.append(row)
            print(
                f"512x512x{slices}: volume {volume_mb:.0f} MB (floor 1.0x), peak RSS "
                f"{peak:.0f} MB = {peak / volume_mb:.2f}x (target <= {_TARGET}x), "
                f"wall {row['median_wall_s']} s, model {row['median_model_s']} s",
                flush=True,
            )
            source.unlink()
    result = {
        "benchmark": "large_volume",
        "model": "ct-threshold",
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "volumes": results,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_volume.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: DICOM series read and label-file write, ours against the plain way.

One invocation builds a 512x512x300 CT phantom, writes it as a DICOM series (one file per
slice, shuffled order), then alternates, after one warm-up each:

* read: a plain pydicom loop (``dcmread`` + ``pixel_array`` per file, sort along the slice
  normal, stack, rescale) against :func:`autolabel.imaging.load_dicom_series` with serial
  headers and with the two-process header pool;
* write: the label map with :func:`autolabel.imaging.write_label_nifti` (given the
  F-ordered map on the volume's grid) against the naive
  ``nib.save(nib.Nifti1Image(c_order_array, affine), "x.nii.gz")`` and against ``nib.save``
  of the F-ordered map;
* convert: :func:`autolabel.convert.to_series` (semantic), for the record.

Every result is checked against the plain one. Medians of ``--repeats`` runs and the
ratios (plain / ours, above 1: ours is faster) go to a table and to
``bench/results/imaging.json``.

    .venv/bin/python bench/bench_imaging.py [--shape 512 512 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from autolabel.convert import build_segment_map, to_series
from autolabel.emulator.phantom import PHANTOM_LABELS, make_phantom
from autolabel.imaging import (
    load_dicom_series,
    read_label_nifti,
    write_dicom_series,
    write_label_nifti,
)

ROOT = Path(__file__).resolve().parents[1]


def plain_pydicom(paths: list[Path]) -> np.ndarray:
    """The usual loop: full read per file, sort by position along the normal, stack, rescale."""
    slices = [pydicom.dcmread(p) for p in paths]
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    stack = np.stack([ds.pixel_array for ds in slices])
    slope, inter = float(slices[0].RescaleSlope), float(slices[0].RescaleIntercept)
    return (stack.astype(np.int32) * int(slope) + int(inter)).astype(np.int16)  # (z, y, x)


def naive_save(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """The usual call, as it is written in most code."""
    nib.save(nib.Nifti1Image(labels, affine), path)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_pairs(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Warm each case once, then run them alternately ``repeats`` times."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn)[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "imaging.json")
    args = parser.parse_args()
    shape = tuple(args.shape)

    print(f"phantom {shape} ...", flush=True)
    phantom = make_phantom(shape, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seconds, paths = timed(lambda: write_dicom_series(phantom.hu, phantom.affine_lps, folder))
        print(f"wrote {len(paths)} DICOM files in {seconds:.1f} s", flush=True)
        random.Random(0).shuffle(paths)

        reference = plain_pydicom(paths)
        serial = load_dicom_series(paths, header_workers=1)
        pooled = load_dicom_series(paths, header_workers=2)
        # Plain axial series: our grid is [column, reversed row, slice] (imaging.layout).
        expected = reference.T[:, ::-1, :]
        assert np.array_equal(serial.array, expected) and np.array_equal(pooled.array, expected)

        read = run_pairs(
            {
                "read: plain pydicom loop": lambda: plain_pydicom(paths),
                "read: load_dicom_series, serial headers": lambda: load_dicom_series(
                    paths, header_workers=1
                ),
                "read: load_dicom_series, 2-process headers": lambda: load_dicom_series(
                    paths, header_workers=2
                ),
            },
            args.repeats,
        )

        volume = serial
        labels = np.asfortranarray(phantom.labels[:, ::-1, :])  # on the volume's grid
        labels_c = np.ascontiguousarray(labels)  # what an argmax over (C, X, Y, Z) gives
        ours_path, naive_path = folder / "ours.nii.gz", folder / "naive.nii.gz"
        write = run_pairs(
            {
                "write: nib.save, C-order array (naive)": lambda: naive_save(
                    labels_c, volume.affine, naive_path
                ),
                "write: nib.save, F-order array": lambda: naive_save(
                    labels, volume.affine, folder / "naive_f.nii.gz"
                ),
                "write: write_label_nifti": lambda: write_label_nifti(labels, volume, ours_path),
            },
            args.repeats,
        )
        assert np.array_equal(read_label_nifti(ours_path)[0], labels)
        assert np.array_equal(np.asanyarray(nib.load(naive_path).dataobj), labels)

        taxonomy = {
            "objectTypes": [
                {"category": name, "classId": i, "labelType": "SEGMENTATION"}
                for i, name in enumerate(PHANTOM_LABELS.values())
            ]
        }
        segment_map = build_segment_map(PHANTOM_LABELS, taxonomy)
        convert = run_pairs(
            {
                "convert: to_series (validate, renumber, write)": lambda: to_series(
                    labels, volume, segment_map, name="s", path=folder / "series.nii.gz"
                )
            },
            args.repeats,
        )
        sizes = {
            "ours_mb": ours_path.stat().st_size / 1e6,
            "naive_mb": naive_path.stat().st_size / 1e6,
        }

    medians = {name: statistics.median(t) for name, t in {**read, **write, **convert}.items()}
    ratios = {
        "read_plain_over_serial": medians["read: plain pydicom loop"]
        / medians["read: load_dicom_series, serial headers"],
        "read_plain_over_pool": medians["read: plain pydicom loop"]
        / medians["read: load_dicom_series, 2-process headers"],
        "read_serial_over_pool": medians["read: load_dicom_series, serial headers"]
        / medians["read: load_dicom_series, 2-process headers"],
        "write_naive_over_ours": medians["write: nib.save, C-order array (naive)"]
        / medians["write: write_label_nifti"],
        "write_nib_f_order_over_ours": medians["write: nib.save, F-order array"]
        / medians["write: write_label_nifti"],
    }
    print(f"\n{'case':<48} {'median':>9} {'min':>9} {'max':>9}")
    for name, t in {**read, **write, **convert}.items():
        print(
            f"{name:<48} {medians[name] * 1e3:7.1f}ms {min(t) * 1e3:7.1f}ms {max(t) * 1e3:7.1f}ms"
        )
    print()
    for name, value in ratios.items():
        print(f"{name:<48} {value:8.2f}x")
    print(f"label file: ours {sizes['ours_mb']:.3f} MB, naive {sizes['naive_mb']:.3f} MB")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "shape": shape,
        "slices": shape[2],
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "median_s": medians,
        "all_s": {**read, **write, **convert},
        "ratios": ratios,
        "file_mb": sizes,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""``autolabel predict``: run a model on a local image and write its label NIfTI.

``INPUT`` is a NIfTI file or a DICOM folder. The label file lands on the input's voxel
grid (the grid RedBrick maps labels onto); a PNG overlay (three planes) is written beside
it unless ``--no-png``. A per-label summary (voxels, millilitres, taxonomy category) is
printed, or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.cli.commands.run import add_guard_arguments, image_limits
from autolabel.errors import ConfigError
from autolabel.settings import ensure_writable_folder


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict`` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help="run a model on a local DICOM folder or NIfTI file",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("input", metavar="INPUT", help="NIfTI file or DICOM folder")
    parser.add_argument("--model", required=True, metavar="NAME|PATH", help="model card")
    parser.add_argument("--out", required=True, metavar="FILE", help="label file (.nii.gz)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--autocast", choices=("auto", "bf16", "fp16", "off"), help="override the card's autocast"
    )
    add_guard_arguments(parser)
    parser.add_argument("--no-png", action="store_true", help="do not write the PNG overlay")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run_predict)


def label_summary(
    labels: npt.NDArray[np.integer], spacing: tuple[float, float, float], spec: Any
) -> list[dict[str, Any]]:
    """Voxel count, volume in ml and category for every label of ``spec`` (0 if absent)."""
    from autolabel.inference.spec import label_counts

    counts = label_counts(labels, max(spec.labels) + 1)  # no int64 copy of the whole map
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return [
        {
            "label": label_id,
            "name": name,
            "category": spec.category_of(label_id),
            "voxels": int(counts[label_id]),
            "ml": round(int(counts[label_id]) * voxel_ml, 2),
        }
        for label_id, name in sorted(spec.labels.items())
    ]


def run_predict(args: argparse.Namespace) -> int:
    """Load the volume and the model, predict, write the label file (and PNG); exit 0."""
    from autolabel.files import remove_stale_temps
    from autolabel.imaging import load_volume, write_label_nifti
    from autolabel.inference import load_model
    from autolabel.inference.guard import guard_model

    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise ConfigError(f"--out must end in .nii or .nii.gz, got {out.name}")
    _refuse_overwriting_input(Path(args.input), out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the label file to write")
    ensure_writable_folder(out.parent, "--out")
    volume = load_volume(args.input, limits=image_limits(args))
    model = guard_model(
        load_model(args.model, device=args.device, autocast=args.autocast), args.model_timeout
    )
    started = time.perf_counter()
    labels = model.predict(volume)
    seconds = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, target=out.name, recursive=False)
    written = write_label_nifti(labels, volume, out)
    png = None if args.no_png else _write_png(volume, labels, model.spec, written)
    report = {
        "input": str(args.input),
        "model": {"name": model.spec.name, "version": model.spec.version},
        "device": str(model.device),
        "seconds": round(seconds, 2),
        "labels_file": str(written),
        "png": str(png) if png else None,
        "labels": label_summary(labels, volume.spacing, model.spec),
        "device_events": [event.kind for event in getattr(model, "events", [])],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    return 0


def _refuse_overwriting_input(source: Path, out: Path) -> None:
    """``--out`` (or its PNG) must not be the input, nor a file inside a DICOM input folder
    the series is read from; compared after resolving symlinks and relative parts."""
    stem = out.name.removesuffix(".gz").removesuffix(".nii")
    real_in = source.resolve()
    for target in (out, out.with_name(f"{stem}.png")):
        real_out = target.resolve()
        inside = real_in.is_dir() and real_in in real_out.parents
        if real_out == real_in or inside:
            where = "is inside the input DICOM folder" if inside else "is the input"
            raise ConfigError(
                f"--out: {target} {where} {source}; the input is never overwritten. "
                "Write the labels to another file."
            )


def _write_png(volume: Any, labels: npt.NDArray[np.integer], spec: Any, nifti: Path) -> Path:
    from autolabel.report.overlay import render_overlay

    stem = nifti.name.removesuffix(".gz").removesuffix(".nii")
    path = nifti.with_name(f"{stem}.png")
    image = render_overlay(
        volume.array,
        labels,
        volume.spacing,
        orientation=volume.orientation,
        names=dict(spec.labels),
        title=f"{spec.name} {spec.version}: {volume.source}",
    )
    image.save(path)
    return path


def _print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report['model']['name']} {report['model']['version']} on {report['input']} "
        f"({report['device']}, {report['seconds']} s)"
    )
    for column in ("label", "name", "category", "voxels", "ml"):
        table.add_column(column, justify="right" if column in ("voxels", "ml") else "left")
    for row in report["labels"]:
        table.add_row(
            str(row["label"]), row["name"], row["category"], str(row["voxels"]), f"{row['ml']:.2f}"
        )
    console = Console(width=120)
    console.print(table)
    console.print(f"labels: {report['labels_file']}")
    if report["png"]:
        console.print(f"overlay: {report['png']}")
    for event in report["device_events"]:
        console.print(f"device event: {event}")

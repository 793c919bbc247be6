"""The baseline of ``bench_pipeline.py``: pre-label with the official SDK, as RedBrick's docs
show, one task at a time.

What a user of the docs writes: export the Label stage's tasks with their files, the SDK
converting each DICOM series to NIfTI (``with_files=True, dicom_to_nifti=True``); load the
image with nibabel (``get_fdata``); run the model (``--model``, default ``ct-threshold``); ``nib.save`` the label map on the image's
grid; save it as a draft with ``project.labeling.put_tasks(..., finalize=False)``; next task.

``--listing per-task`` does the other way the docs show: ``list_tasks`` (queued in Label for
the key), then ``export_tasks(task_id=..., with_files=True, dicom_to_nifti=True)`` per task.

Each step is timed per task (the SDK's DICOM-to-NIfTI call is timed apart from the rest of
the export by wrapping dicom2nifti's function; nothing else is changed). The API key comes
from ``REDBRICK_API_KEY``; the timings go to ``--timings`` as JSON.

    REDBRICK_API_KEY=... .venv/bin/python bench/sdk_baseline.py --url URL --org ORG \\
        --project PROJECT --work DIR [--listing stage|per-task] [--timings FILE] [--model CARD]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dicom2nifti
import nibabel as nib
import redbrick

from autolabel.inference import load_model
from autolabel.records import Volume

_convert_s: list[float] = []


def _timed_conversion() -> None:
    """Time each call of dicom2nifti's ``dicom_series_to_nifti`` (the SDK imports it by name
    at call time, so the wrapper is what it calls)."""
    original = dicom2nifti.dicom_series_to_nifti

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _convert_s.append(time.perf_counter() - began)

    dicom2nifti.dicom_series_to_nifti = wrapper


def exported_tasks(project: Any, listing: str, destination: str) -> Iterator[dict[str, Any]]:
    """The Label stage's tasks with their images downloaded and converted to NIfTI."""
    options = {"with_files": True, "dicom_to_nifti": True, "destination": destination}
    if listing == "stage":
        yield from project.export.export_tasks(stage_name="Label", **options)
        return
    queued = project.export.list_tasks(
        search=redbrick.TaskFilters.QUEUED,
        stage_name="Label",
        user_id=project.context.key_id,
        limit=None,
    )
    for listed in list(queued):
        yield from project.export.export_tasks(task_id=listed["taskId"], **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--org", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--listing", choices=("stage", "per-task"), default="stage")
    parser.add_argument("--timings", type=Path)
    parser.add_argument("--model", default="ct-threshold", help="model card (name or path)")
    args = parser.parse_args()
    started = time.perf_counter()
    _timed_conversion()
    args.work.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's notice about API keys
        project = redbrick.get_project(
            args.org, args.project, os.environ["REDBRICK_API_KEY"], url=args.url
        )
    connect_s = time.perf_counter() - began
    began = time.perf_counter()
    model = load_model(args.model)
    model_load_s = time.perf_counter() - began
    # the card's labels -> the project's taxonomy categories
    segment_map = {str(i): model.spec.category_of(i) for i in model.spec.labels}

    tasks: list[dict[str, Any]] = []
    exported = exported_tasks(project, args.listing, str(args.work / "export"))
    while True:
        began = time.perf_counter()
        task = next(exported, None)
        export_s = time.perf_counter() - began
        if task is None:
            break
        times: dict[str, float] = {"export": export_s}
        times["dicom_to_nifti"] = _convert_s.pop() if _convert_s else 0.0

        began = time.perf_counter()
        image = nib.load(task["series"][0]["items"])
        array = image.get_fdata()
        times["nifti_load"] = time.perf_counter() - began

        began = time.perf_counter()
        labels = model.predict(Volume(array, image.affine))
        times["predict"] = time.perf_counter() - began

        began = time.perf_counter()
        path = args.work / f"{task['taskId']}.nii.gz"
        nib.save(nib.Nifti1Image(labels, image.affine), path)
        times["nifti_save"] = time.perf_counter() - began

        began = time.perf_counter()
        series = [{"segmentations": str(path), "segmentMap": segment_map}]
        failed = project.labeling.put_tasks(
            "Label", [{"taskId": task["taskId"], "series": series}], finalize=False
        )
        times["put_tasks"] = time.perf_counter() - began
        tasks.append({"task_id": task["taskId"], "failed": bool(failed), "seconds": times})
        del array, labels

    wall_s = time.perf_counter() - started
    print(f"{len(tasks)} tasks, {sum(t['failed'] for t in tasks)} failed, {wall_s:.1f} s")
    if args.timings is not None:
        result = {
            "listing": args.listing,
            "connect_s": connect_s,
            "model_load_s": model_load_s,
            "wall_s": wall_s,
            "tasks": tasks,
        }
        args.timings.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

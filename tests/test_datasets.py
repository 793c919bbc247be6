"""Datasets-backed projects: items are ``altadb:`` series, as redbrick-sdk 2.35.4 reads them.

``autolabel emulator seed --datasets`` stores each DICOM study as AltaDB does (a JSON header
per instance and RLE frames) and ``presignItems`` answers an ``altadb:///`` manifest per
series (redbrick/utils/altadb.py). A run on such a project must label the same voxels as on
the same studies stored as plain DICOM files, and the official SDK reads both the items
(its own AltaDB reader) and our labels.
"""

from __future__ import annotations

import asyncio
import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import EmulatorFactory

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.imaging import load_dicom_series

redbrick = pytest.importorskip("redbrick")
from redbrick.utils.altadb import save_dicom_series  # noqa: E402


def _labels_by_name(emulator: EmulatorHandle) -> dict[str, np.ndarray]:
    out = {}
    for task in emulator.tasks():
        (data,) = emulator.label_files(task.task_id)
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        out[task.name] = np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj)
    return out


def _run(emulator: EmulatorHandle, work: Path) -> int:
    return main([
        "run", "--url", emulator.url, "--org", emulator.org_id, "--project",
        emulator.project_id, "--api-key", emulator.api_key, "--work", str(work),
    ])  # fmt: skip


def _sdk_project(emulator: EmulatorHandle) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )


def test_run_on_a_datasets_project_labels_the_right_voxels(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """The same phantoms as AltaDB series and as DICOM files get the very same label maps,
    and the SDK's export shows our labels on the AltaDB-backed tasks."""
    datasets = emulator_factory(datasets=True)
    files = emulator_factory()
    assert all(t.items and t.items[0].startswith("altadb:") for t in datasets.tasks())
    assert _run(datasets, tmp_path / "datasets") == 0
    assert _run(files, tmp_path / "files") == 0
    ours, reference = _labels_by_name(datasets), _labels_by_name(files)
    assert set(ours) == set(reference) and len(ours) == 3
    for name, labels in ours.items():
        assert labels.any(), name
        assert np.array_equal(labels, reference[name]), name
    project = _sdk_project(datasets)
    exported = list(project.export.export_tasks(destination=str(tmp_path / "export")))  # type: ignore[attr-defined]
    assert len(exported) == 3
    for task in exported:
        (series,) = task["series"]
        categories = {v["category"] for v in series["segmentMap"].values()}
        assert {"Body", "Lung", "Bone"} <= categories, task["name"]


@pytest.mark.filterwarnings("ignore:'write_like_original' is deprecated")  # the SDK's own call
def test_the_sdk_reads_the_emulator_altadb_series(
    emulator_factory: EmulatorFactory, tmp_path: Path
) -> None:
    """The SDK's own AltaDB reader (given the API base URL, as its dataset export passes it)
    rebuilds DICOM files from our manifest that decode to the phantom as stored as files."""
    datasets = emulator_factory(datasets=True)
    files = emulator_factory()
    project = _sdk_project(datasets)
    task = datasets.tasks()[0]
    (url,) = project.context.export.presign_items(  # type: ignore[attr-defined]
        datasets.org_id, task.storage_id, list(task.items)
    )
    assert url.startswith("altadb:///")
    written = asyncio.run(save_dicom_series(url, str(tmp_path / "sdk"), base_url=datasets.url))
    assert len(written) == 16
    (plain,) = [t for t in files.tasks() if t.name == task.name]
    originals = []
    for n, key in enumerate(plain.items):
        path = tmp_path / "plain" / f"{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(files.read_file(key))
        originals.append(path)
    theirs = load_dicom_series([Path(p) for p in written])
    reference = load_dicom_series(originals)
    assert np.array_equal(np.asarray(theirs.array), np.asarray(reference.array))
    assert np.allclose(theirs.affine, reference.affine)

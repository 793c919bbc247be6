"""Series -> Volume -> label file -> RedBrick (emulator) -> export: same voxels, same place.

The export runs through the official redbrick-sdk with ``dicom_to_nifti=True``: the SDK
converts the exported series with dicom2nifti and checks (shape, data offset, affines)
that the exported label file matches it, warning "Headers of converted nifti image and
segmentation do not match" otherwise. Every labelled voxel of the export must sit at the
world coordinate where the phantom has that organ. A NIfTI study keeps its own header
(qform and sform) on the exported label file.
"""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autolabel.convert import build_segment_map, to_series
from autolabel.emulator.phantom import PHANTOM_LABELS, make_phantom
from autolabel.imaging import load_dicom_series, load_volume, write_dicom_series

redbrick = pytest.importorskip("redbrick")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(3)
    i, j = [a for a in range(3) if a != axis]
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _phantom_labels_at(world_ras: np.ndarray, labels: np.ndarray, affine_lps: np.ndarray):
    """The phantom's label at RAS points (N x 3), by its own LPS geometry (nearest voxel)."""
    lps = LPS_TO_RAS @ np.c_[world_ras, np.ones(len(world_ras))].T
    ijk = np.linalg.solve(affine_lps, lps)[:3].T
    index = np.rint(ijk).astype(int)
    assert np.allclose(ijk, index, atol=1e-3), "grids must coincide"
    return labels[tuple(index.T)]


def _volume_labels(volume, labels: np.ndarray, affine_lps: np.ndarray) -> np.ndarray:
    """The phantom's labels resampled (exactly) onto the volume's grid via world coordinates."""
    grid = np.indices(volume.shape).reshape(3, -1).T
    world = (volume.affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    return _phantom_labels_at(world, labels, affine_lps).reshape(volume.shape)


@pytest.fixture
def oblique_study(tmp_path: Path):
    """An oblique phantom CT series (shuffled files) and its ground truth."""
    phantom = make_phantom((28, 24, 10), seed=9)
    affine = phantom.affine_lps.copy()
    affine[:3, :3] = _rotation(0, 0.3) @ _rotation(2, 0.2) @ affine[:3, :3]
    folder = tmp_path / "oblique-ct"
    write_dicom_series(phantom.hu, affine, folder, patient_id="ROUNDTRIP")
    return folder, phantom, affine


def _sdk_project(handle: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return redbrick.get_project(
            handle.org_id, handle.project_id, handle.api_key, url=handle.url
        )


@pytest.mark.parametrize("client", ["official-sdk", "autolabel"])
def test_labels_survive_redbrick_at_the_same_world_coordinates(
    emulator_factory, oblique_study, tmp_path, caplog, client
):
    """Submitted labels come back from the SDK export on dicom2nifti's grid, organ by organ."""
    folder, phantom, affine_lps = oblique_study
    handle = emulator_factory(studies=0, from_paths=(folder,))
    (task_id,) = handle.task_ids("Label")
    sdk = _sdk_project(handle)

    # The pipeline's side: load the task's files, predict (here: the ground truth), convert.
    files = sorted(folder.iterdir())
    random.Random(3).shuffle(files)
    volume = load_dicom_series(files, source=f"task {task_id}")
    prediction = _volume_labels(volume, phantom.labels, affine_lps)
    segment_map = build_segment_map(PHANTOM_LABELS, sdk.taxonomy)
    entry = to_series(
        prediction, volume, segment_map, name="oblique-ct", path=tmp_path / "pred.nii.gz"
    )
    assert entry is not None
    task = {"taskId": task_id, "series": [entry]}
    if client == "official-sdk":
        sdk.labeling.put_tasks("Label", [task], finalize=False)
    else:
        from autolabel.redbrick import get_project

        with get_project(handle.org_id, handle.project_id, handle.api_key, url=handle.url) as ours:
            ours.labeling.put_tasks("Label", [task], finalize=False)

    with caplog.at_level(logging.INFO):
        (exported,) = list(
            sdk.export.export_tasks(
                task_id=task_id,
                with_files=True,
                dicom_to_nifti=True,
                destination=str(tmp_path / "export"),
            )
        )
    assert "Converting DICOM image volumes to NIfTI" in caplog.text  # the check ran
    assert "do not match" not in caplog.text
    (series,) = exported["series"]
    image = nib.load(series["items"])  # the SDK's dicom2nifti conversion of the series
    seg = nib.load(series["segmentations"])
    assert seg.shape == image.shape == volume.shape
    assert np.allclose(seg.affine, image.affine, atol=1e-4)

    data = np.asanyarray(seg.dataobj)
    names = {
        int(value): (spec if isinstance(spec, str) else spec["category"])
        for value, spec in series["segmentMap"].items()
    }
    assert sorted(names.values()) == sorted(c.name for c in segment_map.categories.values())
    labelled = np.argwhere(data > 0)
    assert len(labelled) == np.count_nonzero(prediction)
    world = (seg.affine @ np.c_[labelled, np.ones(len(labelled))].T)[:3].T
    truth = _phantom_labels_at(world, phantom.labels, affine_lps)
    got = np.array([names[int(v)].lower() for v in data[tuple(labelled.T)]])
    expected = np.array([PHANTOM_LABELS[int(t)] for t in truth])
    assert np.array_equal(got, expected)
    # And the image voxels there are the phantom's HU at those coordinates.
    hu = np.asanyarray(image.dataobj)[tuple(labelled.T)]
    lps = np.linalg.solve(affine_lps, LPS_TO_RAS @ np.c_[world, np.ones(len(world))].T)[:3].T
    assert np.array_equal(hu, phantom.hu[tuple(np.rint(lps).astype(int).T)])


def test_nifti_study_labels_keep_the_image_header_through_redbrick(emulator_factory, tmp_path):
    """A NIfTI study (qform != sform): the exported label file has the image's grid and header."""
    source = Path(nib.__file__).parent / "tests" / "data" / "reoriented_anat_moved.nii"
    study = tmp_path / "anat-moved.nii"
    study.write_bytes(source.read_bytes())
    handle = emulator_factory(studies=0, from_paths=(study,))
    (task_id,) = handle.task_ids("Label")
    sdk = _sdk_project(handle)

    volume = load_volume(study, source=f"task {task_id}")
    bright = np.asarray(volume.array) > np.percentile(volume.array, 90)
    segment_map = build_segment_map({1: "body"}, sdk.taxonomy)
    entry = to_series(
        bright.astype(np.uint8), volume, segment_map, name="anat", path=tmp_path / "p.nii.gz"
    )
    sdk.labeling.put_tasks("Label", [{"taskId": task_id, "series": [entry]}], finalize=False)
    (exported,) = list(
        sdk.export.export_tasks(task_id=task_id, destination=str(tmp_path / "export"))
    )
    seg = nib.load(exported["series"][0]["segmentations"])
    image = nib.load(study)
    assert np.array_equal(np.asanyarray(seg.dataobj) > 0, bright)
    assert np.allclose(seg.header.get_sform(), image.header.get_sform(), atol=1e-5)
    assert np.allclose(seg.header.get_qform(), image.header.get_qform(), atol=1e-5)
    assert np.allclose(seg.affine, image.affine, atol=1e-5)

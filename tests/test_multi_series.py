"""Tasks of several series: labels land on the series they belong to, judged through the
official SDK's export, and stored labels are read the way the server keeps them.

The task has a blank first series (air: the model finds nothing) and a CT second series,
made by ``emulator seed --from FOLDER --multi-series``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import sdk_export

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.emulator.phantom import make_phantom
from autolabel.imaging import write_dicom_series
from autolabel.redbrick import get_project

redbrick = pytest.importorskip("redbrick")

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``study/0-blank.nii.gz`` (air everywhere) and ``study/1-ct/`` (a CT phantom)."""
    folder = tmp_path_factory.mktemp("multi") / "study"
    folder.mkdir()
    air = np.full(SHAPE, -1000, dtype=np.int16)
    nib.save(nib.Nifti1Image(air, np.eye(4)), folder / "0-blank.nii.gz")
    phantom = make_phantom(SHAPE, seed=3)
    write_dicom_series(phantom.hu, phantom.affine_lps, folder / "1-ct")
    return folder


@pytest.fixture
def emulator(emulator_factory: Any, study: Path) -> EmulatorHandle:
    handle: EmulatorHandle = emulator_factory(studies=0, from_paths=(study,), multi_series=True)
    return handle


def _assert_labels_on_ct_only(exported: dict[str, Any]) -> None:
    blank, ct = exported["series"]
    assert blank["name"] == "0-blank" and ct["name"] == "1-ct"
    assert not blank.get("segmentations") and not blank.get("segmentMap")
    assert {v["category"] for v in ct["segmentMap"].values()} == {"Body", "Lung", "Bone"}
    mask = np.asarray(nib.load(ct["segmentations"]).dataobj)
    assert mask.shape == SHAPE and int(mask.max()) > 0


def test_seed_multi_series_makes_one_task_with_each_series(emulator: EmulatorHandle) -> None:
    """The folder is one task; its NIfTI file and DICOM sub-folder are its two series."""
    (task,) = emulator.tasks()
    assert task.name == "study"
    assert [s["name"] for s in task.series_info] == ["0-blank", "1-ct"]
    assert [s["itemsIndices"] for s in task.series_info] == [[0], list(range(1, 1 + SHAPE[2]))]


def test_seed_multi_series_refuses_a_sub_folder_whose_series_would_vanish(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sub-folder with its DICOM files one level deeper (or none) is named with the fix,
    exit 2, and nothing is seeded: the task would otherwise lack a series without a word."""
    folder = tmp_path / "study"
    shutil.copytree(study, folder)
    (folder / "2-pet" / "nested").mkdir(parents=True)
    shutil.copytree(study / "1-ct", folder / "2-pet" / "nested", dirs_exist_ok=True)
    (folder / "notes.txt").write_text("a stray file is not a series")
    data = tmp_path / "data"
    args = ["emulator", "seed", "--data", str(data), "--studies", "0"]
    assert main([*args, "--from", str(folder), "--multi-series"]) == 2
    err = capsys.readouterr().err
    assert "2-pet" in err and "move its DICOM files up" in err
    assert not (data / "connection.json").exists()


def test_run_puts_the_labels_on_the_second_series_as_the_sdk_exports_them(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A blank first series keeps its place: the official export shows the CT labels on the
    CT series and nothing on the blank one."""
    (task_id,) = emulator.task_ids()
    assert main(["run", "--work", str(tmp_path / "w"), "--quiet", *emulator.cli_flags()]) == 0
    payload = json.loads(next((tmp_path / "w").rglob("series.json")).read_text(encoding="utf-8"))
    assert [bool(s.get("segmentations")) for s in payload["series"]] == [False, True]
    _assert_labels_on_ct_only(sdk_export(emulator, task_id, tmp_path / "export"))


def test_review_correct_puts_the_labels_on_the_second_series(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Accept with correction sends one entry per series too."""
    (task_id,) = emulator.task_ids()
    emulator.as_user(emulator.key_user_id).submit(task_id)  # to Review_1, no labels
    emulator.assign(task_id, emulator.key_user_id)
    code = main(["review", "--correct", "--task-id", task_id,
                     "--work", str(tmp_path / "w"), *emulator.cli_flags()])  # fmt: skip
    assert code == 0
    assert emulator.task(task_id).stage_name == "END"
    _assert_labels_on_ct_only(sdk_export(emulator, task_id, tmp_path / "export"))


def test_stored_labels_carry_image_index_and_are_read_by_series(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server keeps the label file at its own path, named by ``imageIndex`` only; our
    reading (task labels, the audit's Dice) maps it to the CT series through
    ``itemsIndices``."""
    (task_id,) = emulator.task_ids()
    assert (
        main(["run", "--finalize", "--work", str(tmp_path / "w"), "--quiet", *emulator.cli_flags()])
        == 0
    )
    stored = emulator.latest_labels(task_id)
    assert stored is not None
    blank, ct = stored.labels_map
    assert blank is None and ct is not None
    assert set(ct) == {"labelName", "imageIndex"} and ct["imageIndex"] == 1
    assert f"/labels/{task_id}/nifti/" in ct["labelName"]
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        labels = p.get_task(task_id).labels
        assert labels is not None and set(labels.files) == {1}
    emulator.assign(task_id, emulator.key_user_id)
    emulator.as_user(emulator.key_user_id).review(task_id, passed=True)  # Review_1 -> END
    code = main(["reannotate", "--audit", "--dry-run", "--task-id", task_id,
                     "--json", "--work", str(tmp_path / "a"), *emulator.cli_flags()])  # fmt: skip
    assert code == 0
    (decision,) = json.loads(capsys.readouterr().out)["tasks"]
    ct_dice = {k: v for k, v in decision["dice"].items() if k.startswith("1-ct/")}
    assert ct_dice == {"1-ct/Body": 1.0, "1-ct/Lung": 1.0, "1-ct/Bone": 1.0}
    assert decision["status"] == "kept"


def test_auto_review_scores_series_of_one_name_apart(
    emulator_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two series both named ``CT`` (a DICOM folder and a NIfTI file): the second series'
    Dice does not replace the first's, so a series left unlabelled is still rejected."""
    folder = tmp_path / "study"
    folder.mkdir()
    phantom = make_phantom(SHAPE, seed=3)
    write_dicom_series(np.full(SHAPE, -1000, dtype=np.int16), phantom.affine_lps, folder / "CT")
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.affine_lps
    nib.save(nib.Nifti1Image(phantom.hu, ras), folder / "CT.nii.gz")
    emulator: EmulatorHandle = emulator_factory(studies=0, from_paths=(folder,), multi_series=True)
    (task_id,) = emulator.task_ids()
    task = emulator.task(task_id)
    assert [s["name"] for s in task.series_info] == ["CT", "CT"]
    work = ["--work", str(tmp_path / "w"), *emulator.cli_flags()]
    assert main(["run", "--finalize", "--quiet", *work]) == 0  # labels on series 1 only
    # Series 0 now shows the phantom too: its labels (none) miss every category.
    files = write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "phantom")
    for index, path in zip(task.series_info[0]["itemsIndices"], files, strict=True):
        emulator.emulator.blobs.write(
            task.items[index], path.read_bytes(), content_type=None, encoding=None
        )
    emulator.assign(task_id, emulator.key_user_id)
    capsys.readouterr()
    assert main(["review", "--auto", "--task-id", task_id, "--json", *work]) == 0
    (decision,) = json.loads(capsys.readouterr().out)["tasks"]
    assert decision["status"] == "rejected"
    assert decision["dice"] == {
        **{f"0:CT/{c}": 0.0 for c in ("Body", "Lung", "Bone")},
        **{f"1:CT/{c}": 1.0 for c in ("Body", "Lung", "Bone")},
    }
    assert emulator.task(task_id).stage_name == "Label"

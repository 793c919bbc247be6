"""Seeding data folders, and the ``autolabel emulator`` command (seed, serve in a process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from autolabel.cli import main
from autolabel.emulator import Connection, admin, seed, serve_in_thread
from autolabel.emulator.phantom import make_phantom
from autolabel.imaging import write_dicom_series

SMALL = (16, 16, 8)


def test_seed_is_idempotent_and_extends(tmp_path: Path) -> None:
    """Re-seeding keeps the org, project and key; only new phantom seeds become new tasks."""
    first = seed(tmp_path, studies=2, shape=SMALL)
    again = seed(tmp_path, studies=2, shape=SMALL)
    more = seed(tmp_path, studies=2, shape=SMALL, seed=1)
    assert first == again == more == Connection.load(tmp_path)
    with serve_in_thread(tmp_path) as emulator:
        names = [t.name for t in emulator.tasks()]
        assert names == ["phantom-000", "phantom-001", "phantom-002"]
        task = emulator.tasks()[2]
        assert (task.stage_name, task.assigned_to) == ("Label", emulator.key_user_id)
        assert len(task.items) == SMALL[2]
        meta = json.loads(task.meta_data or "{}")
        assert meta == {"source": "phantom", "seed": "2", "shape": "16x16x8"}


def test_seeded_series_are_the_phantom(tmp_path: Path) -> None:
    """The stored DICOM slices hold the phantom's HU values, one file per slice."""
    seed(tmp_path, studies=1, shape=SMALL, seed=5)
    with serve_in_thread(tmp_path) as emulator:
        (task,) = emulator.tasks()
        data = emulator.read_file(task.items[0])
    assert data[128:132] == b"DICM"
    phantom = make_phantom(SMALL, seed=5)
    reference = write_dicom_series(
        phantom.hu,
        phantom.affine_lps,
        tmp_path / "ref",
        patient_id="phantom-005",
        series_description="Synthetic trunk CT phantom-005",
    )
    assert reference[0].read_bytes() == data


def test_seed_from_dicom_folders_and_nifti_files(tmp_path: Path) -> None:
    """Each DICOM folder and each NIfTI file found below --from becomes one task."""
    source = tmp_path / "source"
    phantom = make_phantom(SMALL, seed=1)
    write_dicom_series(phantom.hu, phantom.affine_lps, source / "study-a" / "ct")
    nib.save(nib.Nifti1Image(phantom.hu, np.eye(4)), source / "mr-b.nii.gz")
    data = tmp_path / "data"
    seed(data, studies=0, from_paths=[source])
    with serve_in_thread(data) as emulator:
        tasks = {t.name: t for t in emulator.tasks()}
    assert sorted(tasks) == ["ct", "mr-b"]
    assert len(tasks["ct"].items) == SMALL[2] and len(tasks["mr-b"].items) == 1
    assert tasks["mr-b"].series_info[0]["dataType"] == "NIFTI"


def test_seed_refuses_a_database_without_connection(tmp_path: Path) -> None:
    """A folder with a database but no connection.json is refused with a clear message."""
    seed(tmp_path, studies=0)
    (tmp_path / "connection.json").unlink()
    with pytest.raises(FileExistsError, match=r"no connection\.json"):
        seed(tmp_path, studies=1, shape=SMALL)


def test_cli_seed_prints_the_connection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``autolabel emulator seed`` prints url, org id, project id and the demo key."""
    assert (
        main(["emulator", "seed", "--data", str(tmp_path), "--studies", "1", "--shape", "16,16,8"])
        == 0
    )
    out = capsys.readouterr().out
    connection = Connection.load(tmp_path)
    for value in (connection.org_id, connection.project_id, connection.api_key):
        assert value in out
    assert main(["emulator", "seed", "--data", str(tmp_path), "--shape", "16,16"]) == 2
    assert "--shape" in capsys.readouterr().err
    assert main(["emulator", "serve", "--data", str(tmp_path / "empty"), "--port", "0"]) == 2
    assert "seed the directory first" in capsys.readouterr().err


def test_cli_serve_in_another_process(emulator_template: Path, tmp_path: Path) -> None:
    """``autolabel emulator serve`` answers over HTTP, with --faults active from the start."""
    data = tmp_path / "data"
    shutil.copytree(emulator_template, data)
    faults = json.dumps([{"target": "me", "kind": "status", "status": 503}])
    command = [
        sys.executable,
        "-m",
        "autolabel",
        "emulator",
        "serve",
        "--data",
        str(data),
        "--port",
        "0",
        "--faults",
        faults,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://localhost:")
        connection = Connection.load(data)
        assert connection.url == url
        headers = {"ApiKey": connection.api_key}
        me = {"query": "{ me { userId } }"}
        assert (
            requests.post(f"{url}/graphql/", json=me, headers=headers, timeout=10).status_code
            == 503
        )
        assert (
            requests.post(f"{url}/graphql/", json=me, headers=headers, timeout=10).status_code
            == 200
        )
        assert connection.admin_token and connection.admin_token != connection.api_key
        status, answer = admin.call(url, connection.admin_token, "GET", "tasks")
        assert status == 200 and {t["stage_name"] for t in answer["tasks"]} == {"Label"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_seed_gives_studies_that_share_a_name_unique_task_names(tmp_path: Path) -> None:
    """Two folders both called ``ct`` become ``ct`` and ``ct-2``; seeding again adds none."""
    phantom = make_phantom(SMALL, seed=1)
    for patient in ("a", "b"):
        write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "in" / patient / "ct")
    data = tmp_path / "data"
    seed(data, studies=0, from_paths=[tmp_path / "in"])
    seed(data, studies=0, from_paths=[tmp_path / "in"])
    with serve_in_thread(data) as emulator:
        sources = {t.name: json.loads(t.meta_data or "{}")["source"] for t in emulator.tasks()}
    assert sorted(sources) == ["ct", "ct-2"]
    assert sorted(sources.values()) == [str(tmp_path / "in" / p / "ct") for p in ("a", "b")]


def test_seed_tells_files_of_one_relative_name_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--from CT.nii.gz`` from two folders names two studies: the second is seeded as
    ``CT-2``, not taken for the first one already seeded (and silently dropped)."""
    for number, folder in enumerate(("x", "y")):
        (tmp_path / folder).mkdir()
        hu = np.full(SMALL, 100 * number, dtype=np.int16)
        nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / folder / "CT.nii.gz")
    data = tmp_path / "data"
    for folder in ("x", "y", "x"):
        monkeypatch.chdir(tmp_path / folder)
        seed(data, studies=0, from_paths=["CT.nii.gz"])
    with serve_in_thread(data) as emulator:
        sources = {t.name: json.loads(t.meta_data or "{}")["source"] for t in emulator.tasks()}
    assert sources == {n: str(tmp_path / f / "CT.nii.gz") for n, f in (("CT", "x"), ("CT-2", "y"))}


def test_cli_seed_refuses_an_empty_folder_and_no_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to seed is an error naming the path (exit 2), never a silent no-op."""
    empty = tmp_path / "empty"
    empty.mkdir()
    data = str(tmp_path / "data")
    assert main(["emulator", "seed", "--data", data, "--studies", "0", "--from", str(empty)]) == 2
    assert f"{empty}: found no" in capsys.readouterr().err
    assert main(["emulator", "seed", "--data", data, "--studies", "0"]) == 2
    assert "nothing to seed" in capsys.readouterr().err

"""The upload of a write: label files go up while RedBrick converts the labels.

Judged through the official SDK's export (where the labels landed) and the wire (one
``presignUploadsSDK`` per task), over real sockets against the emulator.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import sdk_export

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.emulator.phantom import make_phantom
from autolabel.emulator.recorder import recording_proxy
from autolabel.imaging import write_dicom_series
from autolabel.inference import load_model
from autolabel.pipeline import RunOptions, run
from autolabel.redbrick import get_project

redbrick = pytest.importorskip("redbrick")

#: Two series of different grids, so labels put on the wrong one cannot pass for right.
SHAPES = {"0-chest": (32, 32, 16), "1-abdomen": (24, 28, 12)}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``study/0-chest/`` and ``study/1-abdomen/``: two CT phantoms, both labelled by a run."""
    folder = tmp_path_factory.mktemp("two-ct") / "study"
    for seed, (name, shape) in enumerate(SHAPES.items(), start=3):
        phantom = make_phantom(shape, seed=seed)
        write_dicom_series(phantom.hu, phantom.affine_lps, folder / name)
    return folder


def _operation(query: str) -> str:
    return query.split("(", 1)[0].split()[-1]


def test_each_series_gets_its_own_labels_from_one_presign(
    emulator_factory: Any, study: Path, tmp_path: Path
) -> None:
    """A task of two labelled series: the official export shows each series' own label
    file (the one the run wrote for it) after the uploads that ran beside the conversion,
    and the task's two files were presigned in one ``presignUploadsSDK`` call."""
    emulator: EmulatorHandle = emulator_factory(studies=0, from_paths=(study,), multi_series=True)
    (task_id,) = emulator.task_ids()
    argv = ["run", "--work", str(tmp_path / "w"), "--quiet", *emulator.cli_flags()]
    with recording_proxy(emulator.url) as proxy:
        argv[argv.index("--url") + 1] = proxy.url
        assert main(argv) == 0
    presigns = [
        e.graphql()["variables"]
        for e in proxy.exchanges
        if e.is_graphql and _operation(e.graphql()["query"]) == "presignUploadsSDK"
    ]
    assert len(presigns) == 1 and len(presigns[0]["filesSeg"]) == 2
    assert emulator.write_counts() == {task_id: 1}

    exported = sdk_export(emulator, task_id, tmp_path / "export")
    assert [s["name"] for s in exported["series"]] == list(SHAPES)
    for index, (series, shape) in enumerate(zip(exported["series"], SHAPES.values(), strict=True)):
        assert {v["category"] for v in series["segmentMap"].values()} >= {"Body", "Bone"}
        landed = np.asarray(nib.load(series["segmentations"]).dataobj)
        (written,) = (tmp_path / "w").rglob(f"series-{index}-labels.nii.gz")
        ours = np.asarray(nib.load(written).dataobj)
        assert landed.shape == shape and int(landed.max()) > 0
        np.testing.assert_array_equal(landed, ours)


def test_labels_the_server_refuses_fail_the_task_and_save_nothing(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """The taxonomy loses ``Bone`` after the run opened the project: RedBrick's conversion
    refuses the labels while their files are already on their way up. Each task ends
    ``failed`` with the ConversionError naming it, and no task has labels: the official
    export shows none, and no write reached the server."""
    store = emulator.emulator.store
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        taxonomy = dict(store.project(emulator.project_id).taxonomy)  # type: ignore[union-attr]
        taxonomy["objectTypes"] = [
            o for o in taxonomy["objectTypes"] if o.get("category") != "Bone"
        ]
        with store.transaction() as db:  # a project admin edits the taxonomy meanwhile
            db.execute(
                "UPDATE projects SET taxonomy = ? WHERE project_id = ?",
                (json.dumps(taxonomy), emulator.project_id),
            )
        summary = run(
            p, load_model("ct-threshold", device="cpu"), RunOptions(work_dir=tmp_path / "w")
        )
    assert summary.exit_code == 1
    assert {o.task_id for o in summary.failed} == set(emulator.task_ids())
    for outcome in summary.failed:
        assert outcome.error_type == "ConversionError"
        assert outcome.task_id in outcome.reason and "Bone" in outcome.reason
        assert emulator.latest_labels(outcome.task_id) is None
        exported = sdk_export(emulator, outcome.task_id, tmp_path / "export" / outcome.task_id)
        assert not any(s.get("segmentations") for s in exported["series"])
        assert not exported.get("labels") and not exported.get("segmentations")
    assert emulator.write_counts() == {}


def test_a_file_sent_ahead_that_the_conversion_does_not_name_is_not_used(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """When the converted ``labelName`` of a position is not the file sent ahead for it,
    that position is uploaded again: the saved labels are the converted file's, as the
    official export shows."""
    from autolabel.redbrick.labels import LabelWriter, SentAhead
    from autolabel.redbrick.types import REDBRICK_STORAGE_ID

    task_id = emulator.task_ids("Label")[0]
    shape = (32, 32, 16)
    files = {}
    for name, value in (("other", 2), ("converted", 1)):
        labels = np.zeros(shape, dtype=np.uint8)
        labels[4:12, 4:12, 2:6] = value
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(labels, np.eye(4)), files[name])
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        writer = LabelWriter(p.client, p.org_id, p.project_id)
        series = [{"segmentations": str(files["converted"]), "segmentMap": {"1": "Liver"}}]
        (converted,) = writer.convert([{"taskId": task_id, "series": series}], REDBRICK_STORAGE_ID)
        ahead = SentAhead(files={0: (files["other"], "not/an/uploaded/key.nii.gz")})
        writer.commit(writer.upload(converted, ahead), stage_name="Label", finished=False)
    exported = sdk_export(emulator, task_id, tmp_path / "export")
    (landed,) = [s["segmentations"] for s in exported["series"]]
    stored = np.asarray(nib.load(landed).dataobj)
    assert int(stored.max()) == 1 and stored.shape == shape


def _label_file(path: Path, shape: tuple[int, int, int] = (32, 32, 16)) -> Path:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:12, 4:12, 2:6] = 1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path


def test_ctrl_c_while_the_server_converts_is_not_held_until_it_answers(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A library user's Ctrl-C (KeyboardInterrupt in the main thread) while RedBrick is
    still converting leaves ``save_labels`` at once: the conversion is a query whose
    answer nobody needs any more, so nothing waits for it (it was joined before, holding
    the interrupt for as long as a slow server took), and nothing is saved."""
    task_id = emulator.task_ids("Label")[0]
    slow = emulator.add_fault("validateAndConvertToImportFormatSDK", "delay", delay_s=10.0, times=1)
    series = [
        {"segmentations": str(_label_file(tmp_path / "l.nii.gz")), "segmentMap": {"1": "Liver"}}
    ]

    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_converting() -> None:
        for _ in range(2000):  # the conversion request reached the server: press Ctrl-C
            if slow.fired:  # to the main thread, as a terminal's Ctrl-C reaches it (a
                # signal sent to the process may land in another thread, and the main
                # thread then notices it only when it next wakes)
                signal.pthread_kill(main, signal.SIGINT)
                return
            threading.Event().wait(0.01)

    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        threading.Thread(target=interrupt_once_converting, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            p.save_labels(task_id, "Label", series)
        converting = [t for t in threading.enumerate() if t.name == "convert" and t.is_alive()]
        assert converting, "the interrupt waited for the server's answer to the conversion"
    assert emulator.write_counts() == {}
    assert emulator.latest_labels(task_id) is None


def test_a_label_file_given_as_a_path_object_is_saved(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """``save_labels`` with ``"segmentations": pathlib.Path(...)`` (what Python code at hand
    passes) saves that file, as the official export shows; it used to fail with a
    TypeError from JSON encoding after the file had been uploaded."""
    task_id = emulator.task_ids("Label")[0]
    path = _label_file(tmp_path / "l.nii.gz")
    with get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url) as p:
        p.save_labels(task_id, "Label", [{"segmentations": path, "segmentMap": {"1": "Liver"}}])
    exported = sdk_export(emulator, task_id, tmp_path / "export")
    (series,) = exported["series"]
    assert [v["category"] for v in series["segmentMap"].values()] == ["Liver"]
    landed = np.asarray(nib.load(series["segmentations"]).dataobj)
    np.testing.assert_array_equal(landed, np.asarray(nib.load(path).dataobj))

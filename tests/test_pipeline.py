"""The pipeline end to end against the emulator, over sockets: drafts, submits, dry runs,
re-runs, and races with people."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.inference import load_model
from autolabel.ledger import Ledger, TaskState, ledger_path
from autolabel.pipeline import RunOptions, RunSummary, run
from autolabel.records import Volume
from autolabel.redbrick import Project, get_project


@pytest.fixture(scope="module")
def ct_model() -> Any:
    return load_model("ct-threshold", device="cpu")


def _project(emulator: EmulatorHandle) -> Project:
    return get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url)


def _connection(emulator: EmulatorHandle) -> dict[str, str]:
    """The connection arguments of ``autolabel.run`` for ``emulator``."""
    return dict(
        url=emulator.url,
        org_id=emulator.org_id,
        project_id=emulator.project_id,
        api_key=emulator.api_key,
    )


def _run(emulator: EmulatorHandle, model: Any, tmp_path: Path, **options: Any) -> RunSummary:
    with _project(emulator) as project:
        return run(project, model, RunOptions(work_dir=tmp_path / "work", **options))


def _label_array(data: bytes) -> np.ndarray:
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    image = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(image.dataobj)


def test_draft_run_saves_each_task_once_with_the_right_segment_map_and_voxels(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    summary = _run(emulator, ct_model, tmp_path)
    assert summary.exit_code == 0
    assert [o.status for o in summary.outcomes] == ["draft_saved"] * 3
    assert emulator.write_counts() == {t: 1 for t in emulator.task_ids()}
    for outcome in summary.outcomes:
        record = emulator.task(outcome.task_id)
        assert (record.stage_name, record.state, record.assigned_to) == (
            "Label",
            "STAGED",
            emulator.key_user_id,
        )
        categories = {
            label["dicom"]["instanceid"]: label["category"]
            for label in emulator.labels(outcome.task_id)
        }
        assert set(categories.values()) == {"Body", "Lung", "Bone"}
        # Provenance: the taxonomy has a "Model" attribute, so every label carries the model.
        assert {
            a["value"]
            for label in emulator.labels(outcome.task_id)
            for a in label["attributes"]
            if a["name"] == "Model"
        } == {"ct-threshold 1.0.0"}
        stored = _label_array(emulator.label_files(outcome.task_id)[0])
        local = np.asarray(nib.load(outcome.files["labels-0"]).dataobj)
        assert np.array_equal(stored, local)
        # Known answer: lungs are air-filled, bone is dense -- check against the image.
        payload = json.loads(Path(outcome.files["payload"]).read_text())
        assert payload["taskId"] == outcome.task_id
        assert payload["series"][0]["segmentMap"] == {
            str(k): {"category": v} for k, v in sorted(categories.items())
        }
        assert Path(outcome.files["preview-0"]).stat().st_size > 1000
        assert outcome.volumes_ml["Body"] > outcome.volumes_ml["Bone"] > 0


def test_labels_lie_on_the_image_grid(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    summary = _run(emulator, ct_model, tmp_path)
    from autolabel.pipeline.fetch import load_task_series

    with _project(emulator) as project:
        outcome = summary.outcomes[0]
        task = project.get_task(outcome.task_id)
        (series,), _ = load_task_series(project, task, tmp_path / "dl")
    volume: Volume = series.volume
    stored = _label_array(emulator.label_files(outcome.task_id)[0])
    assert stored.shape == volume.shape
    lung = stored == _value_of(emulator, outcome.task_id, "Lung")
    bone = stored == _value_of(emulator, outcome.task_id, "Bone")
    hu = np.asarray(volume.array)
    assert lung.sum() > 0 and np.median(hu[lung]) < -600
    assert bone.sum() > 0 and np.median(hu[bone]) > 250


def _value_of(emulator: EmulatorHandle, task_id: str, category: str) -> int:
    for label in emulator.labels(task_id):
        if label["category"] == category:
            return int(label["dicom"]["instanceid"])
    raise AssertionError(f"{category} not in the labels of {task_id}")


def test_finalize_submits_and_moves_tasks_to_review(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    summary = _run(emulator, ct_model, tmp_path, mode="final")
    assert [o.status for o in summary.outcomes] == ["submitted"] * 3
    assert sorted(emulator.task_ids("Review_1")) == sorted(emulator.task_ids())
    assert emulator.write_counts() == {t: 1 for t in emulator.task_ids()}


def test_dry_run_writes_nothing_to_redbrick_and_keeps_the_payloads(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    before = [(t.task_id, t.stage_name, t.state, t.assigned_to) for t in emulator.tasks()]
    summary = _run(emulator, ct_model, tmp_path, mode="dry-run", out_dir=tmp_path / "out")
    after = [(t.task_id, t.stage_name, t.state, t.assigned_to) for t in emulator.tasks()]
    assert before == after
    assert emulator.events() == []
    assert all(emulator.latest_labels(t) is None for t in emulator.task_ids())
    assert [o.status for o in summary.outcomes] == ["dry_run"] * 3
    for outcome in summary.outcomes:
        folder = tmp_path / "out" / outcome.task_id  # by id, never by name
        assert {p.name for p in folder.iterdir()} == {
            "series-0-labels.nii.gz",
            "series-0-preview.png",
            "series.json",
        }
        payload = json.loads((folder / "series.json").read_text())
        assert payload["series"][0]["segmentations"] == str(folder / "series-0-labels.nii.gz")


def test_a_rerun_skips_what_the_same_model_did_and_force_redoes_it(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    first = _run(emulator, ct_model, tmp_path)
    again = _run(emulator, ct_model, tmp_path)
    assert len(first.done) == 3
    assert again.outcomes == [] and again.already_done == 3
    assert emulator.write_counts() == {t: 1 for t in emulator.task_ids()}
    forced = _run(emulator, ct_model, tmp_path, force=True)
    assert len(forced.done) == 3  # our own drafts may be replaced by our own key
    assert emulator.write_counts() == {t: 2 for t in emulator.task_ids()}


def test_limit_and_task_selection(emulator: EmulatorHandle, ct_model: Any, tmp_path: Path) -> None:
    ids = emulator.task_ids()
    one = _run(emulator, ct_model, tmp_path, limit=1)
    assert len(one.done) == 1
    missing = "00000000-0000-4000-8000-000000000000"
    picked = _run(emulator, ct_model, tmp_path / "b", task_ids=(ids[2], missing, "task-7"))
    statuses = {o.task_id: (o.status, o.reason) for o in picked.outcomes}
    assert statuses[ids[2]][0] == "draft_saved"
    assert statuses[missing] == ("skipped", "no such task in this project")
    assert statuses["task-7"] == ("skipped", "not a task id: RedBrick task ids are UUIDs")


class _Interfering:
    """The real model, plus a person acting on the task while the model runs."""

    def __init__(self, model: Any, act: Any) -> None:
        self.model = model
        self.act = act
        self.spec = model.spec

    def predict(self, volume: Volume) -> Any:
        self.act(volume.source)
        return self.model.predict(volume)


def test_a_person_saving_a_draft_between_fetch_and_write_is_never_overwritten(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    target = emulator.task_ids()[0]
    person = emulator.as_user(emulator.human_email)

    def act(source: str) -> None:
        if target in source:
            emulator.assign(target, emulator.human_email)
            person.save_labels(target, labels=[])
            emulator.assign(target, emulator.key_user_id)  # handed back, but now labelled

    summary = _run(emulator, _Interfering(ct_model, act), tmp_path)
    outcome = next(o for o in summary.outcomes if o.task_id == target)
    assert outcome.status == "skipped"
    assert "a person saved labels" in outcome.reason
    latest = emulator.latest_labels(target)
    assert latest is not None and latest.created_by != emulator.key_user_id
    assert emulator.key_writes()[target] == 0
    assert len(summary.done) == 2


def test_a_task_reassigned_between_fetch_and_write_is_skipped(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    target = emulator.task_ids()[1]

    def act(source: str) -> None:
        if target in source:
            emulator.assign(target, emulator.human_email)

    summary = _run(emulator, _Interfering(ct_model, act), tmp_path)
    outcome = next(o for o in summary.outcomes if o.task_id == target)
    assert outcome.status == "skipped"
    assert "assigned to" in outcome.reason and emulator.human_email in outcome.reason
    assert emulator.key_writes()[target] == 0


def test_tasks_a_person_already_labelled_are_left_alone(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    target = emulator.task_ids()[2]
    emulator.assign(target, emulator.human_email)
    emulator.as_user(emulator.human_email).save_labels(target, labels=[{"category": "Liver"}])
    emulator.assign(target, emulator.key_user_id)
    summary = _run(emulator, ct_model, tmp_path)
    outcome = next(o for o in summary.outcomes if o.task_id == target)
    assert outcome.status == "skipped" and "never overwrites" in outcome.reason
    assert emulator.key_writes()[target] == 0


def test_a_bad_series_fails_its_task_only_and_the_ledger_says_why(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    target = emulator.task_ids()[0]
    record = emulator.task(target)
    # Corrupt one stored DICOM slice of the task: a real, undecodable item.
    emulator.emulator.blobs.write(
        record.items[3], b"not a dicom file", content_type=None, encoding=None
    )
    summary = _run(emulator, ct_model, tmp_path)
    assert summary.exit_code == 1
    failed = {o.task_id: o for o in summary.failed}
    assert list(failed) == [target]
    assert target in failed[target].reason or record.name in failed[target].reason
    assert len(summary.done) == 2
    with Ledger(ledger_path(tmp_path / "work")) as ledger:
        history = ledger.history(target)
        assert history[-1].state is TaskState.FAILED
        assert history[-1].error_type == "ImageError"


def test_an_unknown_category_mapping_stops_the_run_before_any_write(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    from autolabel.errors import ConversionError

    with pytest.raises(ConversionError, match="Pancreas"):
        _run(emulator, ct_model, tmp_path, mapping={"bone": "Pancreas"})
    assert emulator.events() == []


def test_a_models_device_events_are_kept_in_the_ledger(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """What the model did to fit its device (out of memory: a smaller batch, the CPU) is
    recorded with the task's ``predicted`` state, as ``LoadedModel.events`` promises."""
    from autolabel.inference.device import DeviceEvent

    class SqueezedModel:
        """The CT model, telling that each volume needed a smaller batch."""

        spec = ct_model.spec

        def __init__(self) -> None:
            self.events: list[DeviceEvent] = []

        def predict(self, volume: Volume) -> Any:
            self.events.append(
                DeviceEvent.now("oom-smaller-batch", "cuda", 2, volume.source, "out of memory")
            )
            return ct_model.predict(volume)

    summary = _run(emulator, SqueezedModel(), tmp_path, limit=1)
    (outcome,) = summary.outcomes
    with Ledger(ledger_path(tmp_path / "work")) as ledger:
        predicted = [e for e in ledger.history(outcome.task_id) if e.state is TaskState.PREDICTED]
    (event,) = predicted[-1].detail["device_events"]
    assert (event["kind"], event["device"], event["batch"]) == ("oom-smaller-batch", "cuda", 2)


def test_the_front_door_resolves_run_options_like_the_command_line(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``autolabel.run`` reads ``[run]`` in autolabel.toml as ``autolabel run`` does, and its
    own arguments win over the file."""
    import autolabel

    (tmp_path / "autolabel.toml").write_text('[run]\nmode = "dry-run"\nlimit = 2\n')
    monkeypatch.chdir(tmp_path)
    connection = _connection(emulator)
    summary = autolabel.run(model=ct_model, previews=False, **connection)
    assert [o.status for o in summary.outcomes] == ["dry_run", "dry_run"]
    assert summary.mode == "dry-run" and emulator.write_counts() == {}
    summary = autolabel.run(model=ct_model, limit=1, previews=False, **connection)
    assert [o.status for o in summary.outcomes] == ["dry_run"]


def test_the_front_door_exports_every_error_a_caller_may_catch() -> None:
    """Each error class of the one tree can be caught as ``autolabel.<Name>``."""
    import inspect

    import autolabel
    from autolabel import errors

    classes = {
        n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, Exception)
    }
    assert classes <= set(autolabel.__all__)
    assert all(getattr(autolabel, name) is getattr(errors, name) for name in classes)


def test_the_front_door_names_an_unknown_option_and_its_likely_spelling(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo or a command-line flag name given to ``autolabel.run`` is refused before the
    run starts, with the option it was likely meant as; nothing is written."""
    import autolabel

    monkeypatch.chdir(tmp_path)
    connection = _connection(emulator)
    with pytest.raises(TypeError, match=r"unknown run option 'limt' \(did you mean limit\?\)"):
        autolabel.run(model=ct_model, limt=2, **connection)
    with pytest.raises(TypeError, match=r"'dry_run' \(did you mean mode=\"dry-run\"\?\)"):
        autolabel.run(model=ct_model, dry_run=True, **connection)
    with pytest.raises(autolabel.ConfigError, match="model_timeout_s must be a positive"):
        autolabel.run(model=ct_model, mode="dry-run", model_timeout_s="5", **connection)
    with pytest.raises(autolabel.ConfigError, match="name must be a task name"):
        autolabel.run(model=ct_model, mode="dry-run", name=3, **connection)
    with pytest.raises(TypeError, match="model must be a card name or path, or a model"):
        autolabel.run(model=3, mode="dry-run", **connection)
    assert emulator.write_counts() == {} and not (tmp_path / "autolabel-work").exists()


def test_the_front_door_takes_one_task_id_given_as_a_string(
    emulator: EmulatorHandle, ct_model: Any, tmp_path: Path
) -> None:
    """``task_ids="<id>"`` runs that one task, not one task per character of the id."""
    import autolabel

    task_id = emulator.task_ids()[0]
    summary = autolabel.run(
        model=ct_model, **_connection(emulator), mode="dry-run", task_ids=task_id, previews=False,
        work_dir=tmp_path / "work",
    )  # fmt: skip
    assert [(o.task_id, o.status) for o in summary.outcomes] == [(task_id, "dry_run")]
    with pytest.raises(autolabel.ConfigError, match="task_ids must be RedBrick task ids"):
        autolabel.run(model=ct_model, mode="dry-run", task_ids=[1, 2], **_connection(emulator))


def test_a_stopped_run_says_not_everything_is_done_and_the_next_run_does_the_rest(
    emulator_factory: Any, ct_model: Any, tmp_path: Path
) -> None:
    """Stopped after its first task (the first Ctrl-C), a run exits 130, not 0 ("everything
    done" would be untrue); the same run again does the other tasks, each written once."""
    import threading

    emulator: EmulatorHandle = emulator_factory(studies=10, shape=(32, 32, 16))

    from autolabel.pipeline.summary import TaskOutcome

    stop = threading.Event()

    class StopAfterOne:
        def on_phase(self, task_id: str, phase: str) -> None:
            pass

        def on_task(self, outcome: TaskOutcome) -> None:
            stop.set()

    options = RunOptions(work_dir=tmp_path / "work", previews=False, fetch_workers=1)
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        first = run(project, ct_model, options, stop=stop, listener=StopAfterOne())
        assert first.interrupted and first.exit_code == 130
        assert first.to_dict()["interrupted"] is True
        assert 1 <= len(first.done) < len(emulator.task_ids())
        second = run(project, ct_model, options)
    assert not second.interrupted and second.exit_code == 0
    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)

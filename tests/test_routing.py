"""Confidence routing over sockets (issue 15): each route judged through the official SDK.

The model is a python plug-in card written here (``sure``): lungs and bone by Hounsfield
units, with class probabilities whose confidence the test sets per task, so each route is
exercised by the real pipeline -- the card loader, the model guard, the flow's decision,
the write, the priority mutation -- and read back with ``redbrick.get_project``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.errors import BadModelOutputError, ConfigError
from autolabel.inference import load_model
from autolabel.inference.confidence import plugin_confidence, region_confidence
from autolabel.ledger import Ledger, TaskState, ledger_path
from autolabel.pipeline import RunOptions, RunSummary, run
from autolabel.pipeline.routing import (
    Thresholds,
    decide_route,
    draft_priority,
    dropped_categories,
    load_thresholds,
)
from autolabel.redbrick import get_project
from autolabel.report import build_report

redbrick = pytest.importorskip("redbrick")

_PLUGIN = '''
import json
import numpy as np


class Sure:
    """Lung (-950 < HU < -400) and bone (HU > 300); the probability of each voxel's class is
    the confidence scores.json sets for its task and category (others share the rest)."""

    def __init__(self, card, device):
        self.table = json.loads((card.folder / "scores.json").read_text())

    def predict(self, volume):
        return self.predict_probabilities(volume)[0]

    def predict_probabilities(self, volume):
        hu = np.asarray(volume.array, dtype=np.float32)
        labels = np.zeros(hu.shape, dtype=np.uint8)
        labels[(hu > -950) & (hu < -400)] = 1
        labels[hu > 300] = 2
        (scores,) = [s for name, s in self.table.items() if f"({name})" in volume.source]
        probabilities = np.empty((3, *hu.shape), dtype=np.float32)
        for value, name in ((0, "background"), (1, "Lung"), (2, "Bone")):
            sure = float(scores.get(name, 0.99))
            where = labels == value
            probabilities[:, where] = (1.0 - sure) / 2
            probabilities[value, where] = sure
        return labels, probabilities
'''

_CARD = """
name = "sure"
version = "1.0.0"
kind = "python"
entry = "sure:Sure"
modality = "CT"

[labels]
1 = "Lung"
2 = "Bone"
"""


def _card(folder: Path, scores: Mapping[str, Mapping[str, float]]) -> Path:
    """The ``sure`` card in ``folder``, giving each task (by name) these confidences."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.toml").write_text(_CARD, encoding="utf-8")
    (folder / "sure.py").write_text(_PLUGIN, encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(scores), encoding="utf-8")
    return folder


def _names(emulator: EmulatorHandle) -> list[str]:
    return sorted(t.name for t in emulator.tasks("Label"))


def _run(
    emulator: EmulatorHandle,
    tmp_path: Path,
    scores: Mapping[str, Mapping[str, float]],
    **options: Any,
) -> RunSummary:
    model = load_model(str(_card(tmp_path / "sure", scores)), device="cpu")
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        return run(project, model, RunOptions(work_dir=tmp_path / "work", **options))


def _sdk(emulator: EmulatorHandle) -> Any:
    """The official SDK's project on the emulator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        return redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )


def _queue(sdk: Any, stage: str = "Label") -> list[dict[str, Any]]:
    """The key's queue in ``stage`` as the SDK lists it, in the order it lists it."""
    return list(
        sdk.export.list_tasks(
            search=redbrick.TaskFilters.QUEUED, stage_name=stage, user_id=sdk.context.key_id
        )
    )


def _in_stage(sdk: Any, stage: str) -> set[str]:
    return {t["name"] for t in sdk.export.list_tasks(stage_name=stage)}


def _exported_categories(sdk: Any, task_id: str, folder: Path) -> dict[str, dict[str, Any]]:
    """category -> attributes of the task's labels, from the SDK's export (into ``folder``)."""
    (task,) = list(sdk.export.export_tasks(task_id=task_id, destination=str(folder)))
    out: dict[str, dict[str, Any]] = {}
    for series in task.get("series") or []:
        for value in (series.get("segmentMap") or {}).values():
            out[value["category"]] = dict(value.get("attributes") or {})
    return out


# -- the three routes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lung", "status", "route"),
    [(0.97, "submitted", "finalize"), (0.8, "draft_saved", "draft")],
    ids=["all-above", "all-below"],
)
def test_all_above_submits_every_task_and_all_below_drafts_every_task(
    emulator: EmulatorHandle, tmp_path: Path, lung: float, status: str, route: str
) -> None:
    """Every task reaches --finalize-above: all leave the Label stage for Review_1. No
    task does: every one is a draft still queued in Label, and each intent recorded so."""
    names = _names(emulator)
    scores = {n: {"Lung": lung, "Bone": 0.95} for n in names}
    summary = _run(emulator, tmp_path, scores, finalize_above=0.9)
    assert [o.status for o in summary.outcomes] == [status] * 3
    assert summary.routes == summary.to_dict()["routes"] == {route: 3}
    sdk = _sdk(emulator)
    queued = sorted(t["name"] for t in _queue(sdk))
    drafts = sdk.export.list_tasks(search=redbrick.TaskFilters.DRAFT, stage_name="Label")
    if route == "finalize":
        assert queued == [] and _in_stage(sdk, "Review_1") == set(names)
    else:
        assert queued == sorted(t["name"] for t in drafts) == names
    with Ledger(ledger_path(tmp_path / "work"), create=False) as ledger:
        intents = [
            e
            for t in emulator.task_ids()
            for e in ledger.history(t)
            if e.state is TaskState.WRITING
        ]
    assert len(intents) == 3 and all(e.detail["finalize"] is (route == "finalize") for e in intents)


def test_mixed_confidence_submits_the_sure_tasks_and_drafts_the_others(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-category thresholds from a file (CLI): the task whose lung is unsure stays in
    Label as a draft with its confidence on the labels; the others are submitted. The
    summary, the report and ``status --json`` count and show each route."""
    sure, unsure, other = _names(emulator)
    card = _card(
        tmp_path / "sure",
        {
            sure: {"Lung": 0.97, "Bone": 0.92},
            unsure: {"Lung": 0.62, "Bone": 0.95},
            other: {"Lung": 0.91, "Bone": 0.86},
        },
    )
    limits = tmp_path / "thresholds.toml"
    limits.write_text('Lung = 0.9\n"*" = 0.8\n', encoding="utf-8")
    work = tmp_path / "work"
    connection = [
        "--url", emulator.url, "--org", emulator.org_id, "--project", emulator.project_id,
        "--api-key", emulator.api_key,
    ]  # fmt: skip
    argv = ["run", *connection, "--model", str(card), "--work", str(work), "--json"]
    assert main([*argv, "--finalize-above", str(limits), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["routes"] == {"finalize": 2, "draft": 1}
    by_name = {t["task_name"]: t for t in printed["tasks"]}
    assert by_name[unsure]["status"] == "draft_saved"
    assert "Lung 0.620 < 0.9" in by_name[unsure]["route_reason"]
    assert by_name[unsure]["confidence"]["Lung"]["confidence"] == pytest.approx(0.62, abs=1e-3)

    sdk = _sdk(emulator)
    queued = _queue(sdk)
    assert [t["name"] for t in queued] == [unsure]
    assert _in_stage(sdk, "Review_1") == {sure, other}
    attributes = _exported_categories(sdk, queued[0]["taskId"], tmp_path / "export")
    assert attributes["Lung"]["Confidence"] == pytest.approx(0.62, abs=1e-3)
    assert attributes["Bone"]["Confidence"] == pytest.approx(0.95, abs=1e-3)
    assert attributes["Lung"]["Model"] == "sure 1.0.0"

    html = build_report(work)
    assert "submitted: every category reached --finalize-above" in html
    assert "<td>Lung</td><td class=n>0.620</td>" in html
    capsys.readouterr()  # the SDK's own log lines
    assert main(["status", "--work", str(work), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    routes = {e["task_name"]: e["route"] for e in status["confidence"]}
    assert routes == {sure: "finalize", unsure: "draft", other: "finalize"}
    payload = json.loads((work / "results" / queued[0]["taskId"] / "series.json").read_text())
    assert payload["confidence"]["Lung"]["confidence"] == pytest.approx(0.62, abs=1e-3)


def test_drop_below_leaves_out_the_unsure_category(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """--drop-below: the task whose bone is unsure is written without bone (its other
    category kept); a dropped category also keeps the task from being submitted."""
    sure, unsure, _ = _names(emulator)
    scores = {n: {"Lung": 0.97, "Bone": 0.96} for n in _names(emulator)}
    scores[unsure] = {"Lung": 0.97, "Bone": 0.3}
    summary = _run(emulator, tmp_path, scores, drop_below=0.5, finalize_above=0.9)
    assert summary.routes == {"finalize": 2, "draft": 1, "dropped": 1}
    by_name = {o.task_name: o for o in summary.outcomes}
    assert by_name[unsure].dropped == ["Bone"] and by_name[unsure].status == "draft_saved"
    sdk = _sdk(emulator)
    export = tmp_path / "export"
    assert set(_exported_categories(sdk, by_name[unsure].task_id, export)) == {"Lung"}
    assert set(_exported_categories(sdk, by_name[sure].task_id, export)) == {"Lung", "Bone"}


def test_prioritize_puts_the_hardest_drafts_first_in_the_sdk_listing(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """--prioritize: each draft's priority is 1 - its least sure category's confidence, and
    the SDK's listing of the key's queue gives the least sure first."""
    easy, hard, middle = _names(emulator)
    scores = {
        easy: {"Lung": 0.97, "Bone": 0.95},
        hard: {"Lung": 0.55, "Bone": 0.9},
        middle: {"Lung": 0.9, "Bone": 0.75},
    }
    summary = _run(emulator, tmp_path, scores, prioritize=True)
    assert {o.task_name: o.priority for o in summary.outcomes} == {
        easy: pytest.approx(0.05, abs=1e-3),
        hard: pytest.approx(0.45, abs=1e-3),
        middle: pytest.approx(0.25, abs=1e-3),
    }
    queue = _queue(_sdk(emulator))
    assert [t["name"] for t in queue] == [hard, middle, easy]
    assert [t["priority"] for t in queue] == pytest.approx([0.45, 0.25, 0.05], abs=1e-3)


# -- models without probabilities --------------------------------------------------------------


def test_a_model_without_probabilities_says_so_and_cannot_route(
    emulator: EmulatorHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ct-threshold gives no probabilities: confidence is null (never a number) in the
    summary, series.json, the ledger, the report and status; routing by it is refused
    before any task, as a configuration error."""
    model = load_model("ct-threshold", device="cpu")
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        with pytest.raises(ConfigError, match="gives no probabilities"):
            run(project, model, RunOptions(work_dir=tmp_path / "w0", finalize_above=0.9))
        summary = run(project, model, RunOptions(work_dir=tmp_path / "work", limit=1))
    (outcome,) = summary.outcomes
    assert outcome.status == "draft_saved" and outcome.confidence is None
    payload = json.loads(Path(outcome.files["payload"]).read_text())
    assert payload["confidence"] is None
    assert "no probabilities" in build_report(tmp_path / "work")
    assert main(["status", "--work", str(tmp_path / "work"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["confidence"]
    assert entry["confidence"] is None and entry["task_id"] == outcome.task_id
    assert emulator.write_counts() == {outcome.task_id: 1}  # the refused run wrote nothing


def test_thresholds_for_a_category_the_model_does_not_write_are_refused(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A per-category threshold naming no category of the run is a configuration error
    naming the known ones (a typo never silently keeps a task from being submitted)."""
    with pytest.raises(ConfigError, match=r"\['Lugn'\] are not categories.*Bone"):
        _run(emulator, tmp_path, {}, finalize_above={"Lugn": 0.9})
    with pytest.raises(ConfigError, match="drop --finalize"):
        RunOptions(mode="final", finalize_above=0.9)


# -- the definition and the decision, without a server -------------------------------------------


def test_confidence_is_the_mean_probability_of_the_predicted_class_with_entropy() -> None:
    """Mean probability of the predicted class over its region; entropy normalised by
    ln(classes): 0 for a certain voxel, 1 for a uniform one; absent labels are absent."""
    labels = np.array([[[1, 1, 2, 0]]], dtype=np.uint8)
    probabilities = np.array(
        [[[[0.0, 0.1, 1 / 3, 1.0]]], [[[1.0, 0.8, 1 / 3, 0.0]]], [[[0.0, 0.1, 1 / 3, 0.0]]]],
        dtype=np.float32,
    )
    found = region_confidence(labels, probabilities)
    assert set(found) == {1, 2}
    assert found[1].confidence == pytest.approx(0.9) and found[1].voxels == 2
    expected = -(0.8 * np.log(0.8) + 2 * 0.1 * np.log(0.1)) / np.log(3) / 2
    assert found[1].entropy == pytest.approx(expected, rel=1e-4)
    assert found[2].confidence == pytest.approx(1 / 3) and found[2].entropy == pytest.approx(1.0)
    with pytest.raises(BadModelOutputError, match="no probability channel"):
        region_confidence(labels, probabilities[:2])


def test_a_plugins_own_scores_are_checked() -> None:
    """A plug-in's confidence() scores must be label ids to numbers in [0, 1]."""
    labels = np.array([[[1, 2]]], dtype=np.uint8)
    found = plugin_confidence("p", {1: 0.7, 2: {"confidence": 0.4, "entropy": 0.2}, 3: 1.0}, labels)
    assert (found[1].confidence, found[1].entropy) == (0.7, None)
    assert (found[2].confidence, found[2].entropy) == (0.4, 0.2)
    assert 3 not in found
    with pytest.raises(BadModelOutputError, match="not a number in"):
        plugin_confidence("p", {1: 1.5}, labels)
    with pytest.raises(BadModelOutputError, match="not a mapping"):
        plugin_confidence("p", [0.5], labels)


def test_the_route_is_judged_on_every_predicted_category() -> None:
    """Submitted only when each category reaches its threshold; no confidence or no
    threshold for a category means a draft, with the reason; a draft's priority is
    1 - its least sure category."""
    confidence = {"Lung": {"confidence": 0.95}, "Bone": {"confidence": 0.85}}
    assert decide_route(False, confidence, Thresholds(0.8)).finalize
    below = decide_route(False, confidence, Thresholds(0.8, {"Bone": 0.9}))
    assert (below.finalize, below.name) == (False, "draft") and "Bone 0.850 < 0.9" in below.reason
    unnamed = decide_route(False, confidence, Thresholds(None, {"Lung": 0.5}))
    assert not unnamed.finalize and "Bone: no threshold" in unnamed.reason
    assert "no probabilities" in decide_route(False, None, Thresholds(0.5)).reason
    assert decide_route(True, None, None).finalize  # no routing: the mode decides
    assert draft_priority(confidence) == pytest.approx(0.15)
    assert draft_priority(None) is None


def test_priorities_outside_0_to_1_or_of_other_tasks_are_refused(
    emulator: EmulatorHandle,
) -> None:
    """The client refuses a priority outside [0, 1] before sending; the emulator refuses a
    task that is not the project's, and sets none of the batch."""
    import uuid

    from autolabel.errors import PlatformError

    first = emulator.task_ids("Label")[0]
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
            project.upload.update_tasks_priority([{"taskId": first, "priority": 1.5}])
        batch = [{"taskId": first, "priority": 0.9}, {"taskId": str(uuid.uuid4()), "priority": 0.5}]
        with pytest.raises(PlatformError, match="does not exist"):
            project.upload.update_tasks_priority(batch)
    assert emulator.task(first).priority is None


def test_a_routed_submit_whose_reply_was_lost_is_settled_once_as_submitted(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """A submit chosen by --finalize-above whose answer a gateway lost (the commit lands
    later) is settled by re-reading as a submit -- written once, recorded submitted."""
    import time

    emulator.add_fault("putTaskAndLabelsSDK", "late_commit", status=504, delay_s=3.0, times=1)
    names = _names(emulator)
    model = load_model(str(_card(tmp_path / "sure", {n: {} for n in names})), device="cpu")
    options = RunOptions(
        work_dir=tmp_path / "work", previews=False, settle_window_s=8.0, finalize_above=0.9
    )
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        summary = run(project, model, options)
    assert [o.status for o in summary.outcomes] == ["submitted"] * 3, summary.to_dict()
    time.sleep(3.0)  # past the late commit: a second send would show now
    assert emulator.key_writes() == dict.fromkeys(emulator.task_ids(), 1)
    assert {t.stage_name for t in emulator.tasks()} == {"Review_1"}


# -- hostile model output (breaker15) ------------------------------------------------------


@pytest.mark.parametrize("lung", [float("nan"), 5.0], ids=["nan", "logits"])
def test_probabilities_that_are_not_probabilities_never_submit_a_task(
    emulator: EmulatorHandle, tmp_path: Path, lung: float
) -> None:
    """A model whose "probabilities" are NaN or logits (5.0) on one task's lung: that task
    fails with a clear error naming it, and is neither submitted nor saved (NaN compares
    false against every threshold, so it used to pass --finalize-above); the others route
    as usual. Judged through the official SDK's listings."""
    bad, *good = _names(emulator)
    scores = {n: {"Lung": 0.97, "Bone": 0.95} for n in good}
    scores[bad] = {"Lung": lung, "Bone": 0.95}
    summary = _run(emulator, tmp_path, scores, finalize_above=0.9)
    by_name = {o.task_name: o for o in summary.outcomes}
    assert by_name[bad].status == "failed"
    assert "probabilit" in by_name[bad].reason and "[0, 1]" in by_name[bad].reason
    assert [by_name[n].status for n in good] == ["submitted", "submitted"]
    sdk = _sdk(emulator)
    assert _in_stage(sdk, "Review_1") == set(good)
    assert [t["name"] for t in _queue(sdk)] == [bad]
    assert list(sdk.export.list_tasks(search=redbrick.TaskFilters.DRAFT, stage_name="Label")) == []


def test_a_non_finite_confidence_never_reaches_a_threshold() -> None:
    """However a NaN confidence got in, it routes the task to a draft and is dropped by
    --drop-below, never taken as sure."""
    nan = {"Lung": {"confidence": float("nan"), "entropy": None, "voxels": 3}}
    route = decide_route(False, nan, Thresholds(0.5))
    assert not route.finalize and "Lung" in route.reason
    assert dropped_categories(nan, Thresholds(0.5)) == ["Lung"]


def test_a_plugins_numpy_scores_are_accepted() -> None:
    """A plug-in naturally keys its scores by ``np.unique(label_map)`` and scores them with
    numpy floats: those are label ids and numbers too."""
    labels = np.array([[[0, 1], [2, 2]]], dtype=np.uint8)
    found = plugin_confidence("p", {np.int64(1): np.float32(0.75), np.uint8(2): 1}, labels)
    assert found[1].confidence == pytest.approx(0.75) and found[2].confidence == 1.0
    with pytest.raises(BadModelOutputError, match="not a number in"):
        plugin_confidence("p", {1: np.float64("nan"), 2: 1.0}, labels)
    rounded = plugin_confidence("p", {1: np.float32(1.0000001), 2: 1.0}, labels)
    assert rounded[1].confidence == 1.0  # float32 rounding past 1 is 1, not an error


@pytest.mark.parametrize(
    ("content", "wrong"),
    [('{"Lung": true}', "True"), ('{"*": true}', "True"), ('{"Lung": 1e400}', "inf"),
     ('{"Lung": NaN}', "nan"), ("Lung = 1.5", "1.5")],
    ids=["bool", "bool-default", "overflow", "nan", "above-1"],
)  # fmt: skip
def test_a_wrong_threshold_file_is_refused_naming_the_file(
    tmp_path: Path, content: str, wrong: str
) -> None:
    """A threshold of ``true`` (not read as 1), NaN, inf or above 1 in a file is refused
    with an error naming the flag, the file and the value."""
    path = tmp_path / ("limits.toml" if "=" in content else "limits.json")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_thresholds(str(path), "--finalize-above")
    assert "--finalize-above" in str(refused.value) and str(path) in str(refused.value)
    assert wrong in str(refused.value)
    with pytest.raises(ConfigError, match=r"--drop-below 1\.5"):
        load_thresholds("1.5", "--drop-below")


def test_a_task_whose_every_category_is_dropped_is_skipped_for_that_reason(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """--drop-below leaves out every category of one task: it is skipped saying so (not
    "the model found nothing", whose advice ``--empty submit`` would submit an empty task),
    counted as dropped, and left untouched in Label (the SDK's export shows no labels)."""
    unsure, *sure = _names(emulator)
    scores = {n: {"Lung": 0.97, "Bone": 0.96} for n in sure}
    scores[unsure] = {"Lung": 0.5, "Bone": 0.4}
    summary = _run(emulator, tmp_path, scores, drop_below=0.9)
    by_name = {o.task_name: o for o in summary.outcomes}
    assert by_name[unsure].status == "skipped"
    assert "--drop-below" in by_name[unsure].reason and "--empty" not in by_name[unsure].reason
    assert "Bone" in by_name[unsure].reason and "Lung" in by_name[unsure].reason
    assert summary.routes["dropped"] == 1
    sdk = _sdk(emulator)
    assert _exported_categories(sdk, by_name[unsure].task_id, tmp_path / "export") == {}
    assert [by_name[n].status for n in sure] == ["draft_saved", "draft_saved"]


def test_a_plugin_that_leaves_a_predicted_label_unscored_fails_the_task() -> None:
    """Scores keyed off by one (``{0: .., 1: ..}`` for labels 1 and 2) would leave label 2
    unjudged -- and a task whose unjudged category is never below a threshold would be
    submitted. Every label id the map contains needs a score."""
    labels = np.array([[[0, 1], [2, 2]]], dtype=np.uint8)
    with pytest.raises(BadModelOutputError, match=r"no score for label id 2"):
        plugin_confidence("p", {0: 0.2, 1: 0.95}, labels)


@pytest.mark.parametrize(
    "submit",
    [{"finalize_above": 0.5}, {"mode": "final"}],
    ids=["finalize-above-below-drop-below", "finalize-mode"],
)
def test_a_dropped_category_keeps_the_task_a_draft_whatever_the_thresholds(
    emulator: EmulatorHandle, tmp_path: Path, submit: dict[str, Any]
) -> None:
    """A lung at 0.7 is dropped by --drop-below 0.9, yet reaches --finalize-above 0.5 (or
    the run submits everything, --finalize). The task must stay a draft in Label for a
    person to draw the lung, not go to review without it. Judged through the SDK."""
    unsure, *sure = _names(emulator)
    scores = {n: {"Lung": 0.97, "Bone": 0.97} for n in sure}
    scores[unsure] = {"Lung": 0.7, "Bone": 0.97}
    summary = _run(emulator, tmp_path, scores, drop_below=0.9, **submit)
    by_name = {o.task_name: o for o in summary.outcomes}
    assert by_name[unsure].dropped == ["Lung"] and by_name[unsure].status == "draft_saved"
    assert "Lung" in by_name[unsure].route_reason and "--drop-below" in by_name[unsure].route_reason
    sdk = _sdk(emulator)
    assert [t["name"] for t in _queue(sdk)] == [unsure]
    assert _in_stage(sdk, "Review_1") == set(sure)
    assert set(_exported_categories(sdk, by_name[unsure].task_id, tmp_path / "export")) == {"Bone"}

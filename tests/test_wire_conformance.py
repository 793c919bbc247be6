"""On the wire, autolabel sends what redbrick-sdk 2.35.4 sends (issue #10 point 9).

A recording proxy (:mod:`autolabel.emulator.recorder`, a real HTTP proxy on loopback) sits
in front of the emulator, and the emulator hands out storage URLs through it, so every
GraphQL call and every storage transfer passes it. Each case makes the same call with the
official SDK and with autolabel's client, on two copies of one seeded emulator (same ids),
and compares the recordings: operation sequence, variables (JSON strings parsed,
``labelsMap`` positions kept), the headers the SDK sets, and the upload steps (conversion
query, presign, PUT headers, the labels mutation).

What may differ, each for a stated reason (:data:`SDK_ONLY_READS`, :data:`FREE_HEADERS`):
the SDK looks the label storage up on every ``put_tasks`` (we use RedBrick's storage id,
as it answers); each client names its own ``User-Agent``; we ask for gzip only, not brotli.
Generated file names (fresh UUIDs per upload) are compared by shape.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from conftest import add_series_task, blank_ct_items

from autolabel import redbrick as ours
from autolabel.emulator import EmulatorHandle
from autolabel.emulator.recorder import Exchange, RecordingProxy, recording_proxy

redbrick = pytest.importorskip("redbrick")

SHAPE = (32, 32, 16)
#: Reads the SDK makes inside ``put_tasks`` that autolabel has no need for: the label storage
#: (the SDK's default ``label_storage_id`` is RedBrick's own storage, whose id we send).
#: ``membersSDK``: the SDK reads the org's members to print assignees as emails in listings
#: and exports; autolabel keeps the user ids it is given.
SDK_ONLY_READS = frozenset({"getLabelStorageSDK", "membersSDK"})
#: Request headers that name the client, not the protocol (compared for presence only).
FREE_HEADERS = frozenset({"user-agent", "accept-encoding"})
#: The GraphQL headers the SDK sets (redbrick/common/client.py ``RBClientImpl.headers``).
SDK_HEADERS = ("RB-SDK-Version", "ApiKey", "Content-Type", "Accept", "Content-Encoding-RB")
#: The headers of a storage PUT the SDK sets (redbrick/utils/files.py ``upload_files``).
PUT_HEADERS = ("Content-Type", "x-ms-blob-type", "Content-Encoding")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_JSON_STRINGS = ("original", "labelsData")

Act = Callable[[Any, EmulatorHandle, "Ids"], Any]


class Ids:
    """The emulator's ids by role, so that two copies of it compare by name."""

    def __init__(self, emulator: EmulatorHandle) -> None:
        self.emulator = emulator
        self.names: dict[str, str] = {
            emulator.org_id: "<org>",
            emulator.project_id: "<project>",
        }
        self.refresh()

    def refresh(self) -> None:
        """Learn the ids of tasks made since (a test may add one)."""
        for task in self.emulator.tasks():
            self.names[task.task_id] = f"<task {task.name}>"
            self.names[task.dp_id] = f"<dp {task.name}>"
        self.names[self.emulator.key_user_id.removeprefix("API:")] = "<key user>"

    def task(self, n: int, stage: str | None = "Label") -> str:
        return self.emulator.task_ids(stage)[n]

    def normalise(self, value: Any) -> Any:
        """``value`` with known ids named and other UUIDs (fresh file names) as ``<uuid>``."""
        if isinstance(value, dict):
            return {k: self.normalise(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.normalise(v) for v in value]
        if isinstance(value, str):
            text = value
            for raw, name in self.names.items():
                text = text.replace(raw, name)
            return _UUID.sub("<uuid>", text)
        return value


def _variables(exchange: Exchange, ids: Ids) -> dict[str, Any]:
    variables = dict(exchange.graphql().get("variables") or {})
    for name in _JSON_STRINGS:
        if isinstance(variables.get(name), str):
            variables[name] = json.loads(variables[name])
    normalised = ids.normalise(variables)
    assert isinstance(normalised, dict)
    return normalised


def _operation(exchange: Exchange) -> str:
    query = str(exchange.graphql()["query"])
    match = re.search(r"(query|mutation)\s+(\w+)", query)
    assert match, query[:80]
    return match.group(2)


def steps(exchanges: list[Exchange], ids: Ids) -> list[tuple[Any, ...]]:
    """What crossed the wire, comparable across clients: one tuple per request."""
    out: list[tuple[Any, ...]] = []
    for exchange in exchanges:
        if exchange.is_graphql:
            operation = _operation(exchange)
            if operation in SDK_ONLY_READS:
                continue
            headers = {h: exchange.header(h) for h in SDK_HEADERS}
            assert "gzip" in (exchange.header("Accept-Encoding") or "")
            out.append(("graphql", operation, _variables(exchange, ids), headers))
        else:
            headers = (
                {h: exchange.header(h) for h in PUT_HEADERS} if exchange.method == "PUT" else {}
            )
            out.append(("storage", exchange.method, ids.normalise(exchange.path), headers))
    return _downloads_unordered(out)


def _downloads_unordered(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Consecutive storage GETs sorted: both clients download a task's files in parallel."""
    out: list[tuple[Any, ...]] = []
    run: list[tuple[Any, ...]] = []
    for step in [*found, ("end",)]:
        if step[:2] == ("storage", "GET"):
            run.append(step)
            continue
        out += sorted(run, key=repr)
        run = []
        if step != ("end",):
            out.append(step)
    return out


@contextmanager
def _recorded(emulator: EmulatorHandle) -> Iterator[RecordingProxy]:
    """A proxy in front of ``emulator`` that also carries its presigned storage URLs."""
    with recording_proxy(emulator.url) as proxy:
        served = emulator.emulator.base_url
        emulator.emulator.base_url = proxy.url
        try:
            yield proxy
        finally:
            emulator.emulator.base_url = served


def _open(module: Any, emulator: EmulatorHandle, url: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        return module.get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=url)


def record(
    module: Any, emulator: EmulatorHandle, act: Act, setup: Callable[[EmulatorHandle], None]
) -> tuple[list[tuple[Any, ...]], Any]:
    """Run ``setup`` on the emulator, then ``act`` with ``module``'s client; the steps seen."""
    setup(emulator)
    ids = Ids(emulator)
    with _recorded(emulator) as proxy:
        project = _open(module, emulator, proxy.url)
        if act is not OPEN:
            proxy.clear()  # opening the project is a case of its own
        result = act(project, emulator, ids)
        ids.refresh()
        return steps(proxy.exchanges, ids), result


# -- the calls --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Liver (1) and Spleen (2) on the seeded studies' grid; one path for both clients."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:12, 4:12, 2:6] = 1
    labels[18:26, 18:26, 8:12] = 2
    path = tmp_path_factory.mktemp("wire") / "prediction.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path


def _series(label_file: Path) -> list[dict[str, Any]]:
    return [{"segmentations": str(label_file), "segmentMap": {"1": "Liver", "2": "Spleen"}}]


def _export_dir(emulator: EmulatorHandle) -> str:
    """Where an export writes (the SDK's default is a folder in the working directory)."""
    return str(emulator.data_dir / "export")


def _nothing(emulator: EmulatorHandle) -> None:
    return None


def _in_review(emulator: EmulatorHandle) -> None:
    """The first task submitted by a person, now in Review_1 and assigned to the key."""
    task_id = emulator.task_ids("Label")[0]
    labeler = emulator.as_user(emulator.human_email)
    emulator.assign(task_id, emulator.human_email)
    labeler.save_labels(task_id, finished=True, labels=[])
    emulator.assign(task_id, emulator.key_user_id)


def _in_ground_truth(emulator: EmulatorHandle) -> None:
    """The first task accepted into Ground Truth."""
    _in_review(emulator)
    task_id = emulator.task_ids("Review_1")[0]
    emulator.as_user(emulator.key_user_id).review(task_id, passed=True)


def _two_series(emulator: EmulatorHandle) -> None:
    """A task of two series (the first task's CT, twice), assigned to the key in Label."""
    ct = emulator.tasks("Label")[0].items
    add_series_task(emulator, "two-series", [("blank", ct), ("CT", ct)])


def _put(finalize: bool, label_file: Path) -> Act:
    return lambda p, emu, ids: p.labeling.put_tasks(
        "Label", [{"taskId": ids.task(0), "series": _series(label_file)}], finalize=finalize
    )


def _two_series_put(label_file: Path) -> Act:
    def act(p: Any, emu: EmulatorHandle, ids: Ids) -> Any:
        (task,) = [t for t in emu.tasks("Label") if t.name == "two-series"]
        series = [{"name": "blank"}, {"name": "CT", **_series(label_file)[0]}]
        return p.labeling.put_tasks("Label", [{"taskId": task.task_id, "series": series}])

    return act


def _review(result: bool, comment: str | None = None) -> Act:
    return lambda p, emu, ids: p.review.put_tasks(
        "Review_1",
        [{"taskId": ids.task(0, "Review_1")}],
        review_result=result,
        **({"review_comment": comment} if comment else {}),
    )


def _correct(label_file: Path) -> Act:
    return lambda p, emu, ids: p.review.put_tasks(
        "Review_1", [{"taskId": ids.task(0, "Review_1"), "series": _series(label_file)}]
    )


def _list(**filters: Any) -> Act:
    def act(p: Any, emu: EmulatorHandle, ids: Ids) -> Any:
        if filters.get("user_id") == "key":
            return list(p.export.list_tasks(**{**filters, "user_id": p.context.key_id}))
        return list(p.export.list_tasks(**filters))

    return act


def OPEN(p: Any, emu: EmulatorHandle, ids: Ids) -> Any:
    """The "open the project" case: ``get_project`` (recorded), then the key's user id."""
    return p.context.key_id


def _cases(label_file: Path) -> dict[str, tuple[Callable[[EmulatorHandle], None], Act]]:
    """Each case: how the emulator is prepared, and the call both clients make."""
    return {
        "put_tasks draft": (_nothing, _put(False, label_file)),
        "put_tasks submit": (_nothing, _put(True, label_file)),
        "put_tasks existing labels": (
            _nothing,
            lambda p, emu, ids: p.labeling.put_tasks(
                "Label", [{"taskId": ids.task(0)}], existing_labels=True
            ),
        ),
        "put_tasks two series, the first empty": (_two_series, _two_series_put(label_file)),
        "review accept": (_in_review, _review(True)),
        "review reject with comment": (_in_review, _review(False, "the lung is missing")),
        "review accept with correction": (_in_review, _correct(label_file)),
        "move_tasks_to_start": (
            _in_ground_truth,
            lambda p, emu, ids: p.labeling.move_tasks_to_start(task_ids=[ids.task(0, "END")]),
        ),
        "assign_tasks to the key": (
            _nothing,
            lambda p, emu, ids: p.labeling.assign_tasks([ids.task(1)], email=emu.human_email),
        ),
        "list my queued tasks": (
            _nothing,
            _list(search=redbrick.TaskFilters.QUEUED, stage_name="Label", user_id="key"),
        ),
        "search a task by name": (_nothing, _list(task_name="phantom-001", exact_match=True)),
        "update task priorities": (
            _nothing,
            lambda p, emu, ids: p.upload.update_tasks_priority(
                [
                    {"taskId": ids.task(0), "priority": 0.75},
                    {"taskId": ids.task(1), "priority": 0.2},
                ]
            ),
        ),
        "open the project": (_nothing, OPEN),
        "export one task": (
            _nothing,
            lambda p, emu, ids: list(
                p.export.export_tasks(task_id=ids.task(0), destination=_export_dir(emu))
            ),
        ),
        "export one task with its files": (
            _nothing,
            lambda p, emu, ids: list(
                p.export.export_tasks(
                    task_id=ids.task(0), with_files=True, destination=_export_dir(emu)
                )
            ),
        ),
        "export Ground Truth": (
            _in_ground_truth,
            lambda p, emu, ids: list(
                p.export.export_tasks(only_ground_truth=True, destination=_export_dir(emu))
            ),
        ),
    }


_UPLOAD = ("validateAndConvertToImportFormatSDK", "presignUploadsSDK", "putTaskAndLabelsSDK")
#: Each case and the GraphQL operations it compares (the test checks the SDK sends them).
CASES: dict[str, tuple[str, ...]] = {
    "put_tasks draft": _UPLOAD,
    "put_tasks submit": _UPLOAD,
    "put_tasks existing labels": ("putLabelingTaskSDK",),
    "put_tasks two series, the first empty": _UPLOAD,
    "review accept": ("putReviewTaskSDK",),
    "review reject with comment": ("putReviewTaskSDK",),
    "review accept with correction": _UPLOAD,
    "move_tasks_to_start": ("moveTaskToStartSDK",),
    "assign_tasks to the key": ("assignTasksMultipleUsersSDK",),
    "list my queued tasks": ("currentUserSDK", "tasksListSDK"),
    "search a task by name": ("tasksListSDK",),
    "update task priorities": ("updateTasksPrioritiesSDK",),
    "open the project": ("getProjectSDK", "currentUserSDK"),
    "export one task": ("taskSDK",),
    "export one task with its files": ("taskSDK", "presignItemsSDK"),
    "export Ground Truth": ("tasksPagedSDK",),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_requests_as_the_sdk(
    case: str, emulator_factory: Callable[..., EmulatorHandle], label_file: Path
) -> None:
    """Same operations in the same order, same variables, same headers, same uploads."""
    setup, act = _cases(label_file)[case]
    theirs, their_result = record(redbrick, emulator_factory(), act, setup)
    mine, my_result = record(ours, emulator_factory(), act, setup)
    assert {step[1] for step in theirs if step[0] == "graphql"} == set(CASES[case])
    assert [s[:2] for s in mine] == [s[:2] for s in theirs]
    for my_step, their_step in zip(mine, theirs, strict=True):
        assert my_step == their_step
    if isinstance(their_result, list) and case.startswith(("put_tasks", "review")):
        assert my_result == their_result == []  # no failed task on either side


# -- a run of autolabel against the SDK's put_tasks ----------------------------------------

WRITE_STEPS = frozenset(
    {"validateAndConvertToImportFormatSDK", "presignUploadsSDK", "PUT", "putTaskAndLabelsSDK"}
)


def _blank_first(emulator: EmulatorHandle, tmp: Path) -> str:
    """A task whose first series is air (the model finds nothing) and whose second is the
    first seeded CT; assigned to the key in Label. Returns its id."""
    ct = emulator.tasks("Label")[0].items
    blank = blank_ct_items(emulator, tmp / "blank", SHAPE)
    return add_series_task(emulator, "blank-first", [("blank", blank), ("CT", ct)])


def _write_steps(exchanges: list[Exchange], ids: Ids) -> list[tuple[Any, ...]]:
    """The upload steps only, label file paths compared by file name."""
    out = []
    for step in steps(exchanges, ids):
        if step[1] not in WRITE_STEPS:
            continue
        if step[1] == "validateAndConvertToImportFormatSDK":
            for task in step[2]["original"]:
                for entry in task.get("series") or []:
                    if "segmentations" in entry:
                        entry["segmentations"] = Path(entry["segmentations"]).name
        out.append(step)
    return out


def _conversion_first(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A run's write steps in the SDK's order. The run sends the conversion while it
    presigns and PUTs the label file (they do not depend on it), so the conversion may
    come anywhere before the saving mutation; the PUT still follows its presign and the
    mutation comes last, after every other step."""
    names = [step[1] for step in found]
    assert names[-1] == "putTaskAndLabelsSDK" and names.count("putTaskAndLabelsSDK") == 1
    assert names.index("presignUploadsSDK") < names.index("PUT")
    conversions = [s for s in found if s[1] == "validateAndConvertToImportFormatSDK"]
    return conversions + [s for s in found if s[1] != "validateAndConvertToImportFormatSDK"]


def test_run_writes_a_blank_first_series_as_the_sdk_does(
    emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """``autolabel run`` on a task whose first series is blank sends what the SDK's
    ``put_tasks`` sends for the same labels given in the task's series order: one entry per
    series, the blank one without a segmentation, ``labelsMap`` ``[None, {..seriesIndex 1}]``.
    """
    from autolabel.cli import main

    mine_emulator, their_emulator = emulator_factory(), emulator_factory()
    my_task = _blank_first(mine_emulator, tmp_path / "mine")
    their_task = _blank_first(their_emulator, tmp_path / "theirs")
    ids = Ids(mine_emulator)
    with _recorded(mine_emulator) as proxy:
        argv = [
            "run", "--url", proxy.url, "--org", mine_emulator.org_id,
            "--project", mine_emulator.project_id, "--api-key", mine_emulator.api_key,
            "--task-id", my_task, "--work", str(tmp_path / "work"),
        ]  # fmt: skip
        assert main(argv) == 0
    mine = _conversion_first(_write_steps(proxy.exchanges, ids))
    # The labels of the CT series as the run wrote them (series.json, plus the provenance
    # attributes the run adds when it sends them), placed by series name, not position.
    payload = json.loads(next((tmp_path / "work" / "results").glob("*/series.json")).read_text())
    (ct,) = [e for e in payload["series"] if e["name"] == "CT"]
    (sent_ct,) = [
        e for step in mine if step[1] == "validateAndConvertToImportFormatSDK"
        for e in step[2]["original"][0]["series"] if "segmentations" in e
    ]  # fmt: skip
    in_task_order = [
        {"name": "blank"},
        {"name": "CT", "segmentations": ct["segmentations"], "segmentMap": sent_ct["segmentMap"]},
    ]

    their_ids = Ids(their_emulator)
    with _recorded(their_emulator) as proxy:
        project = _open(redbrick, their_emulator, proxy.url)
        proxy.clear()
        failed = project.labeling.put_tasks(
            "Label", [{"taskId": their_task, "series": in_task_order}], finalize=False
        )
    assert failed == []
    theirs = _write_steps(proxy.exchanges, their_ids)
    (their_put,) = [s for s in theirs if s[1] == "putTaskAndLabelsSDK"]
    assert [e and e["seriesIndex"] for e in their_put[2]["labelsMap"]] == [None, 1]
    assert [s[:2] for s in mine] == [s[:2] for s in theirs]
    for my_step, their_step in zip(mine, theirs, strict=True):
        assert my_step == their_step


def test_every_operation_autolabel_sends_is_compared(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Record what autolabel's commands send (run, run --finalize, review --accept, --reject,
    --correct, reannotate): every GraphQL operation among them is one a case above compares
    with the SDK's, variables and headers included."""
    from autolabel.cli import main

    def connection(url: str) -> list[str]:
        return [
            "--url", url, "--org", emulator.org_id, "--project", emulator.project_id,
            "--api-key", emulator.api_key,
        ]  # fmt: skip

    first, second, third = emulator.task_ids("Label")
    with _recorded(emulator) as proxy:
        work = ["--work", str(tmp_path / "work")]
        assert main(["run", *connection(proxy.url), *work, "--task-id", first]) == 0
        assert main(["run", *connection(proxy.url), *work, "--finalize", "--force"]) == 0
        for task_id in (first, second, third):
            emulator.assign(task_id, emulator.key_user_id)
        decisions = (
            (first, ["--accept"]),
            (second, ["--reject", "--comment", "the lung is missing"]),
            (third, ["--correct"]),
        )
        for task_id, decision in decisions:
            argv = ["review", *connection(proxy.url), *work, *decision, "--task-id", task_id]
            assert main(argv) == 0, decision
        assert main(["reannotate", *connection(proxy.url), "--task-id", first]) == 0
    sent = {_operation(e) for e in proxy.exchanges if e.is_graphql}
    compared = {operation for operations in CASES.values() for operation in operations}
    assert sent - compared == set()
    assert {"putTaskAndLabelsSDK", "putReviewTaskSDK", "moveTaskToStartSDK"} <= sent

"""Recording a task's failure can never itself fail on what the task left behind.

Before: a NaN-affine NIfTI gave NaN volumes, the ledger refused them inside the error
handler, and the whole run died with a traceback; the good tasks after it were never
written. The loader now refuses such geometry (``tests/test_corpus.py``); this checks the
deeper guard, the failure path itself.
"""

from __future__ import annotations

import math
from pathlib import Path

from autolabel.emulator import EmulatorHandle
from autolabel.errors import ImageError
from autolabel.ledger import Ledger, ModelKey, TaskState, ledger_path
from autolabel.pipeline.book import RunBook
from autolabel.pipeline.fetch import FetchReport, LabelsMarker
from autolabel.pipeline.flow import plain_json
from autolabel.pipeline.options import RunOptions
from autolabel.pipeline.steps import Converted
from autolabel.redbrick import get_project


def test_a_failure_with_nan_measurements_is_recorded_and_the_run_goes_on(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    options = RunOptions(work_dir=tmp_path)
    key = ModelKey("m", "1")
    with (
        get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        ) as project,
        Ledger(ledger_path(tmp_path)) as ledger,
    ):
        book = RunBook(project, key, options, ledger, None)
        book.begin(("autolabel", "run"))
        task = next(iter(project.list_assigned_tasks("Label")))
        flow = book.start(task)
        flow.fetched(FetchReport(task, "", 1, LabelsMarker.of(task), 0.1))
        volumes = {"Body": math.nan, "Lung": math.inf}
        flow.converted(Converted([{"name": "s"}], {}, volumes, seconds=math.nan))
        ended = flow.failed("write", ImageError("series 0: broken"))
        assert ended.status == "failed" and ended.reason == "write: series 0: broken"
        last = ledger.history(task.task_id)[-1]
        assert last.state is TaskState.FAILED
        assert last.detail["volumes_ml"] == {"Body": None, "Lung": None}
        assert last.error_message == "series 0: broken"


def test_plain_json_keeps_numbers_and_text_and_drops_only_non_finite_values() -> None:
    assert plain_json({"a": 1.5, "b": [math.nan, 2], "c": Path("x"), 4: None}) == {
        "a": 1.5,
        "b": [None, 2],
        "c": "x",
        "4": None,
    }

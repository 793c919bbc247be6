"""The adversarial pass, made permanent: every entry of the bad-input corpus
(``tests/corpus.py``) goes through ``autolabel run`` (seeded into the emulator beside good
tasks, with ``emulator seed --from``) and ``autolabel predict``. Each bad input must end in
one clear error naming it, never a traceback; the good inputs are written.

The test prints its figures: inputs tried, clear errors, tracebacks (which must be 0).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from corpus import BAD, GOOD, build_corpus

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.emulator.datapoints import new_task
from autolabel.ledger import Ledger, TaskState, ledger_path

#: A task name no file system accepts as a file name (Errno 36 once, for results paths).
LONG_NAME = "n" * 4000


def _is_clear(text: str, expect: str) -> bool:
    return expect in text and "Traceback" not in text and "Errno" not in text


@pytest.fixture
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _add_long_named_task(emulator: EmulatorHandle, like: str) -> str:
    """A copy of task ``like`` (same images) under a 4,000-character name."""
    record = emulator.task(like)
    store = emulator.emulator.store
    project = store.project(emulator.project_id)
    assert project is not None
    task = new_task(
        store, project, name=LONG_NAME, items=list(record.items),
        series_info=list(record.series_info), created_by=emulator.key_user_id,
        pre_assign={"Label": emulator.key_user_id},
    )  # fmt: skip
    return str(task.task_id)


def test_every_bad_input_fails_its_own_task_clearly_and_the_good_ones_are_written(
    emulator_factory: Any, corpus: dict[str, Path], tmp_path: Path
) -> None:
    folder = next(iter(corpus.values())).parent
    emulator: EmulatorHandle = emulator_factory(studies=0, from_paths=(folder,))
    by_name = {emulator.task(t).name: t for t in emulator.task_ids("Label")}
    assert set(by_name) == {e.name for e in (*BAD, *GOOD)}
    long_id = _add_long_named_task(emulator, by_name["good-dicom"])
    env = emulator.environment()
    work = tmp_path / "work"
    # --no-previews: the NaN-affine task used to kill the whole run from the error handler.
    done = subprocess.run(
        [sys.executable, "-m", "autolabel", "run", "--json", "--quiet", "--no-previews",
         "--work", str(work), "--fetch-workers", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    outcomes = {o["task_id"]: o for o in json.loads(done.stdout)["tasks"]}

    clear, tracebacks, unclear = 0, 0, []
    for entry in BAD:
        outcome = outcomes[by_name[entry.name]]
        if "Traceback" in outcome["reason"]:
            tracebacks += 1
        if outcome["status"] == "failed" and _is_clear(outcome["reason"], entry.expect):
            clear += 1
        else:
            unclear.append((entry.name, outcome["status"], outcome["reason"][:300]))
    written = [e.name for e in GOOD if outcomes[by_name[e.name]]["status"] == "draft_saved"]
    long_outcome = outcomes[long_id]  # once failed with a raw "[Errno 36] File name too long"
    print(
        f"\ncorpus via run: inputs tried {len(BAD) + len(GOOD) + 1}, bad {len(BAD)}, "
        f"clear errors {clear}, tracebacks {tracebacks}, good written {len(written)}/"
        f"{len(GOOD)}, 4,000-character name: {long_outcome['status']}"
    )
    assert unclear == []
    assert tracebacks == 0
    assert written == [e.name for e in GOOD]
    assert long_outcome["status"] == "draft_saved", long_outcome["reason"]
    # Good tasks reached RedBrick; no bad task wrote anything.
    writes = emulator.key_writes()
    assert {t for t, n in writes.items() if n} <= {by_name[e.name] for e in GOOD} | {long_id}
    assert all(writes.get(by_name[e.name]) == 1 for e in GOOD)
    with Ledger(ledger_path(work)) as ledger:
        assert ledger.runs()[0].status == "finished"
        for entry in BAD:
            last = ledger.history(by_name[entry.name])[-1]
            assert last.state is TaskState.FAILED and last.error_type == "ImageError"


def test_every_bad_input_gets_one_clear_line_from_predict(
    corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clear, tracebacks, unclear = 0, 0, []
    for entry in (*BAD, *GOOD):
        out = tmp_path / "out" / f"{entry.name}-labels.nii.gz"
        argv = ["predict", str(corpus[entry.name]), "--model", "ct-threshold", "--out", str(out)]
        try:
            code = main([*argv, "--no-png"])
        except BaseException as exc:
            tracebacks += 1
            unclear.append((entry.name, f"{type(exc).__name__}: {exc}"))
            continue
        err = capsys.readouterr().err
        if entry in GOOD:
            assert code == 0 and out.is_file(), err
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        if code == 1 and len(lines) == 1 and _is_clear(lines[0], entry.expect):
            clear += 1
            assert not out.exists()
        else:
            unclear.append((entry.name, f"exit {code}: {err[:300]}"))
    print(
        f"\ncorpus via predict: inputs tried {len(BAD) + len(GOOD)}, bad {len(BAD)}, "
        f"clear errors {clear}, tracebacks {tracebacks}"
    )
    assert unclear == []
    assert tracebacks == 0

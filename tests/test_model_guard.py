"""A model that exits, interrupts, loops or hangs fails its own task; the run goes on.

Models are real python-kind cards (``plugin.py`` beside ``model.toml``), run through
``load_model``, the pipeline against the emulator over sockets, and the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.errors import LedgerError, ModelError, ModelTimeoutError
from autolabel.inference import load_model
from autolabel.inference.guard import guard_model
from autolabel.ledger import Ledger, TaskState, ledger_path
from autolabel.pipeline import RunOptions, run
from autolabel.records import Volume
from autolabel.redbrick import get_project

#: Plug-in bodies; the first call for a volume whose first voxel is odd misbehaves.
EXITS = "import sys\n\ndef predict(volume):\n    sys.exit(3)\n"
INTERRUPTS = "def predict(volume):\n    raise KeyboardInterrupt\n"
LOOPS = "def predict(volume):\n    while True:\n        pass\n"
# Blocked in native code (time.sleep): the async stop cannot reach it, the card is reloaded.
HANGS = "import time\n\ndef predict(volume):\n    time.sleep(3600)\n"
# Misbehaves on one task only (the phantom whose name holds 001), labels the others.
ONE_BAD = """
import sys
import numpy as np

def predict(volume):
    if "phantom-001" in volume.source:
        sys.exit(0)
    return (np.asarray(volume.array) > 300).astype(np.uint8)
"""


def _card(folder: Path, body: str, *, runtime: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(body))
    (folder / "model.toml").write_text(
        'name = "misbehaving"\nversion = "1"\nkind = "python"\nentry = "plugin:predict"\n'
        f'[labels]\n1 = "Bone"\n{runtime}\n'
    )
    return folder / "model.toml"


def _volume() -> Volume:
    array = np.zeros((8, 8, 4), dtype=np.int16)
    return Volume(array=array, affine=np.eye(4), source="scan.nii.gz")


@pytest.mark.parametrize(
    ("body", "message"),
    [(EXITS, r"called sys.exit\(3\)"), (INTERRUPTS, "raised KeyboardInterrupt")],
)
def test_exit_or_interrupt_inside_predict_is_a_model_error(
    tmp_path: Path, body: str, message: str
) -> None:
    model = guard_model(load_model(_card(tmp_path, body), device="cpu"))
    with pytest.raises(ModelError, match=message):
        model.predict(_volume())


def test_a_model_looping_in_python_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    model = guard_model(load_model(_card(tmp_path, LOOPS), device="cpu"), timeout_s=0.5)
    with pytest.raises(ModelTimeoutError, match=r"time limit of 0.5 s and was stopped"):
        model.predict(_volume())
    assert model.abandoned == 0


def test_a_model_stuck_in_native_code_is_abandoned_and_reloaded(tmp_path: Path) -> None:
    model = guard_model(load_model(_card(tmp_path, HANGS), device="cpu"), timeout_s=0.3)
    model.grace_s = 0.2
    first = model.model
    with pytest.raises(ModelTimeoutError, match="abandoned"):
        model.predict(_volume())
    assert model.abandoned == 1
    assert model.model is not first  # the next task gets a fresh instance from the card


def test_the_card_sets_the_time_limit_and_the_flag_overrides_it(tmp_path: Path) -> None:
    card = _card(tmp_path, LOOPS, runtime="[runtime]\ntimeout_s = 0.4")
    assert guard_model(load_model(card, device="cpu")).timeout_s == 0.4
    assert guard_model(load_model(card, device="cpu"), timeout_s=7).timeout_s == 7
    with pytest.raises(ModelTimeoutError, match=r"0\.4 s"):
        guard_model(load_model(card, device="cpu")).predict(_volume())


def test_a_run_with_a_model_that_exits_fails_that_task_and_writes_the_others(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    model = load_model(_card(tmp_path / "card", ONE_BAD), device="cpu")
    work = tmp_path / "work"
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        summary = run(project, model, RunOptions(work_dir=work, previews=False))
    assert [o.task_name for o in summary.failed] == ["phantom-001"]
    assert "called sys.exit(0)" in summary.failed[0].reason
    assert len(summary.done) == 2
    assert sum(emulator.key_writes().values()) == 2
    with Ledger(ledger_path(work)) as ledger:
        assert ledger.runs()[0].status == "finished"
        assert ledger.history(summary.failed[0].task_id)[-1].state is TaskState.FAILED


def test_cli_run_with_a_looping_model_ends_at_the_timeout_with_exit_1(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Before: ``run`` hung forever and only a second Ctrl-C ended it."""
    card = _card(tmp_path / "card", LOOPS)
    done = subprocess.run(
        [sys.executable, "-m", "autolabel", "run", "--model", str(card), "--work",
         str(tmp_path / "work"), "--quiet", "--json", "--model-timeout", "0.5", "--limit", "2"],
        env=emulator.environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.count("ran past its time limit of 0.5 s") == 2
    with Ledger(ledger_path(tmp_path / "work")) as ledger:
        assert ledger.runs()[0].status == "finished"


def test_cli_predict_with_a_model_that_exits_says_so_and_exits_1(tmp_path: Path) -> None:
    """Before: exit 0 and no output at all."""
    from autolabel.imaging import write_volume_nifti

    scan = write_volume_nifti(_volume(), tmp_path / "scan.nii.gz")
    done = subprocess.run(
        [sys.executable, "-m", "autolabel", "predict", str(scan), "--model",
         str(_card(tmp_path / "card", EXITS)), "--out", str(tmp_path / "labels.nii.gz")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "called sys.exit(3)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "labels.nii.gz").exists()


def test_sigterm_during_a_looping_model_ends_the_run_interrupted_not_running(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Before: SIGTERM only printed "stopping", the run never ended and the ledger kept
    the run ``running``. Now the task in hand ends at the model's time limit."""
    import signal
    import time

    card = _card(tmp_path / "card", LOOPS)
    work = tmp_path / "work"
    process = subprocess.Popen(
        [sys.executable, "-m", "autolabel", "run", "--model", str(card), "--work", str(work),
         "--quiet", "--model-timeout", "2", "--fetch-workers", "1", "--queue-depth", "1"],
        env=emulator.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _task_events(work):  # a task was fetched: the model has it in hand
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert "Traceback" not in err
    with Ledger(ledger_path(work)) as ledger:
        assert ledger.runs()[0].status == "interrupted"
        assert ledger.summary().counts.get("failed", 0) >= 1


def _task_events(work: Path) -> int:
    """How many (task, model) pairs the run's ledger has events for (0 before it exists)."""
    if not ledger_path(work).is_file():
        return 0
    try:
        with Ledger(ledger_path(work), create=False) as ledger:
            return ledger.summary().total
    except LedgerError:  # the run may be creating the file right now
        return 0

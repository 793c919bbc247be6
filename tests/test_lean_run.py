"""What keeps a run lean (issue 16), as a user sees it: a python card starts without torch,
previews still reach the results off the write's path, the input checksum taken while
downloading is the one of the files, label counts are exact, progress events are kept.

No timing is asserted: bench/bench_phases.py and bench/bench_pipeline.py measure speed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.imaging import checksum_digests, checksum_files
from autolabel.inference import load_model
from autolabel.inference.spec import label_counts
from autolabel.ledger import Ledger, ModelKey, TaskState, ledger_path
from autolabel.pipeline import RunOptions, run
from autolabel.pipeline.previews import PreviewWorker
from autolabel.redbrick import get_project

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pydicom", "nibabel", "PIL", "scipy", "ray", "matplotlib")


def _imported_after(code: str) -> set[str]:
    """The heavy packages a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    return {m for m in done.stdout.strip().split(",") if m}


def test_the_command_line_and_the_run_recipe_import_no_heavy_package() -> None:
    loaded = _imported_after(
        "import autolabel.cli, autolabel.pipeline, autolabel.cli.progress, autolabel.imaging\n"
        "autolabel.cli.build_parser()"
    )
    assert loaded == set()


def test_a_numpy_python_card_loads_and_predicts_without_torch() -> None:
    loaded = _imported_after(
        "import numpy as np\n"
        "from autolabel.inference import load_model\n"
        "from autolabel.records import Volume\n"
        f"model = load_model({str(ROOT / 'bench' / 'cards' / 'two-threshold')!r})\n"
        "labels = model.predict(Volume(np.full((4, 4, 4), 300, np.int16), np.eye(4)))\n"
        "assert labels.max() == 2 and model.device == 'cpu'"
    )
    assert "torch" not in loaded


def test_a_card_failing_on_a_volume_names_the_model(tmp_path: Path) -> None:
    card = tmp_path / "broken"
    card.mkdir()
    (card / "model.toml").write_text(
        'name = "broken"\nversion = "1"\nkind = "python"\nentry = "broken:predict"\n'
        '[labels]\n1 = "body"\n',
        encoding="utf-8",
    )
    (card / "broken.py").write_text(
        "def predict(volume):\n    raise RuntimeError('no memory left')\n", encoding="utf-8"
    )
    from autolabel.errors import ModelError
    from autolabel.records import Volume

    model = load_model(card, device="cpu")
    with pytest.raises(ModelError, match=r"model 'broken' failed.*no memory left"):
        model.predict(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4)))


def test_a_draft_run_keeps_its_previews_and_checksums_the_files_it_downloaded(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    project = get_project(emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url)
    options = RunOptions(work_dir=tmp_path / "work")
    with project:
        summary = run(project, load_model("ct-threshold", device="cpu"), options)
        assert summary.done and not summary.failed
        for outcome in summary.outcomes:
            preview = Path(outcome.files["preview-0"])
            assert preview.is_file() and preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # the checksum recorded at fetch is the checksum of the task's files
        task = project.get_task(summary.outcomes[0].task_id)
        series = project.download_items(task, tmp_path / "again")
    files = [p for s in series for p in s.paths]
    assert [d for s in series for d in s.digests] == [
        hashlib.sha256(p.read_bytes()).digest() for p in files
    ]
    with Ledger(ledger_path(options.work_dir)) as ledger:
        fetched = [
            e
            for e in ledger.history(task.task_id)
            if e.state is TaskState.FETCHED and e.input_checksum
        ]
    assert fetched and fetched[-1].input_checksum == checksum_files(files)
    assert checksum_digests([d for s in series for d in s.digests]) == checksum_files(files)


def test_a_failing_preview_is_left_out_and_drain_waits_for_the_others(tmp_path: Path) -> None:
    worker = PreviewWorker(depth=1)
    release = threading.Event()

    def slow() -> None:
        release.wait(5)
        (tmp_path / "a.png").write_bytes(b"png")

    def broken() -> None:
        raise OSError("disk full")

    worker.submit(tmp_path / "a.png", slow)
    worker.submit(tmp_path / "b.png", broken)
    release.set()
    worker.submit(tmp_path / "c.png", lambda: (tmp_path / "c.png").write_bytes(b"png"))
    worker.drain()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c.png"]


def test_a_hung_preview_never_hangs_the_run(tmp_path: Path) -> None:
    """A renderer that never returns: submits stop waiting for it, the previews still to
    come are left out, and drain returns; the previews rendered before it stay on disk."""
    worker = PreviewWorker(depth=1, stuck_after_s=0.3)
    forever = threading.Event()
    worker.submit(tmp_path / "a.png", lambda: (tmp_path / "a.png").write_bytes(b"png"))
    worker.submit(tmp_path / "hung.png", lambda: forever.wait(60))
    for name in ("b.png", "c.png", "d.png"):  # one waits in the queue, then it is stuck
        worker.submit(tmp_path / name, lambda name=name: (tmp_path / name).write_bytes(b"png"))
    worker.drain()
    assert worker.stuck
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    forever.set()  # let the daemon thread go


@pytest.mark.parametrize(
    ("dtype", "high", "order"),
    [(np.uint8, 3, "F"), (np.uint8, 200, "C"), (np.uint16, 3000, "F"), (np.int32, 5, "C")],
)
def test_label_counts_equal_a_plain_count(dtype: type, high: int, order: str) -> None:
    rng = np.random.default_rng(high)
    labels = np.asarray(rng.integers(0, high + 1, (37, 41, 23)), dtype=dtype, order=order)
    plain = np.bincount(labels.ravel()).tolist()
    assert label_counts(labels).tolist() == plain
    top = int(labels.max())
    assert label_counts(labels, high=top).tolist() == plain  # the caller's maximum: same


def test_label_counts_refuse_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        label_counts(np.array([[[0, -1]]], dtype=np.int16))


def test_progress_events_are_committed_for_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        handle = ledger.start_run(
            mode="draft", command=(), options={}, model=ModelKey("m", "1", "")
        )
        handle.record("t1", TaskState.FETCHED, task_name="a")  # a progress event: no fsync
        with Ledger(path) as reader:  # another connection, as another process would see it
            assert [e.state for e in reader.history("t1")] == [TaskState.FETCHED]


def test_a_preview_that_exits_leaves_the_previews_queued_after_it_rendered(
    tmp_path: Path,
) -> None:
    """A renderer raising ``SystemExit`` loses only its own preview: the ones queued behind
    it are still written before :meth:`PreviewWorker.drain` returns (drain never hangs)."""
    previews = PreviewWorker(depth=2)
    queued = threading.Event()
    rendered: list[str] = []

    def exits() -> object:
        queued.wait(10)  # the next preview is queued behind this one before it fails
        raise SystemExit(3)

    previews.submit(tmp_path / "a.png", exits)
    previews.submit(tmp_path / "b.png", lambda: rendered.append("b"))
    queued.set()
    previews.drain()
    assert rendered == ["b"]


def test_a_python_card_is_handed_a_gpu_wherever_torch_may_see_one(tmp_path: Path) -> None:
    """``--device auto`` asks torch for a GPU on machines exposing one as NVIDIA nodes, as
    WSL2 does (``/dev/dxg``) or as ROCm does (``/dev/kfd``); not where there is none."""
    from autolabel.inference.python_card import _cuda_possible

    assert not _cuda_possible(str(tmp_path))
    for node in ("nvidia0", "dxg", "kfd"):
        (tmp_path / node).touch()
        assert _cuda_possible(str(tmp_path)) == sys.platform.startswith("linux")
        (tmp_path / node).unlink()

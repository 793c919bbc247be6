"""Careless and hostile command lines: broken model cards, bad limits, an output that is the
input, a huge phantom. Each ends in one clear line and the README's exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autolabel.cli import main
from autolabel.emulator import EmulatorHandle
from autolabel.errors import ConfigError
from autolabel.files import TEMP_SUFFIX
from autolabel.imaging import write_volume_nifti
from autolabel.inference import read_card
from autolabel.records import Volume

GOOD_CARD = (
    'name = "fine"\nversion = "1"\nkind = "python"\nentry = "p:predict"\n[labels]\n1 = "a"\n'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nkind = "python"\n', r"missing required 'labels' \(\[labels\] table"),
        ('name = "x"\n[labels]\n1 = "a"\n', r"missing required 'kind' \(kind = one of python"),
        (
            'name = "x"\nkind = "python"\n[lables]\n1 = "a"\n',
            r"unknown key 'lables'; did you mean 'labels'\?",
        ),
        ('name = "x"\nkind = "python"\nlabels = "a"\n', "labels must be a table"),
    ],
)
def test_card_mistakes_name_the_file_the_key_and_the_near_miss(
    tmp_path: Path, text: str, message: str
) -> None:
    """Before: the whole message was ``'labels'``."""
    path = tmp_path / "model.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_card(path)
    assert str(path.resolve().parent) in str(caught.value) or str(path) in str(caught.value)


def test_one_broken_card_does_not_hide_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``autolabel models`` exited 2 and listed nothing."""
    (tmp_path / "fine").mkdir()
    (tmp_path / "fine" / "model.toml").write_text(GOOD_CARD)
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "model.toml").write_text('name = "typo"\nkind = "python"\n[lables]\n')
    monkeypatch.setenv("AUTOLABEL_MODELS", str(tmp_path))
    assert main(["models", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["fine"]["kind"] == "python"
    assert listed["ct-threshold"]["available"] is True
    assert listed["typo"]["available"] is False
    assert "did you mean 'labels'" in listed["typo"]["reason"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "typo" in table and "fine" in table and "broken card" in table
    # Asking for the broken card is the configuration error.
    assert main(["predict", "x.nii.gz", "--model", "typo", "--out", str(tmp_path / "o.nii")]) != 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--min-component-voxels", "-5"],
        ["--model-timeout", "0"],
        ["--model-timeout", "nan"],
        ["--max-voxels", "0"],
        ["--max-image-mb", "-1"],
    ],
)
def test_bad_limits_are_usage_errors_before_anything_runs(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``--min-component-voxels -5`` failed every task, one by one."""
    with pytest.raises(SystemExit) as caught:
        main(["run", "--dry-run", "--work", str(tmp_path), *flags])
    assert caught.value.code == 2
    assert flags[0] in capsys.readouterr().err


def _scan(path: Path) -> Path:
    array = np.zeros((8, 8, 4), dtype=np.int16)
    return write_volume_nifti(Volume(array=array, affine=np.eye(4)), path)


def test_predict_never_overwrites_its_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``--out`` equal to the input replaced the image by its label map, exit 0."""
    scan = _scan(tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    os.symlink(scan, tmp_path / "link.nii.gz")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for out in (str(scan), "../scan.nii.gz", str(tmp_path / "link.nii.gz")):
        code = main(["predict", str(scan), "--model", "ct-threshold", "--out", out, "--no-png"])
        assert code == 2
        assert "the input is never overwritten" in capsys.readouterr().err
    assert scan.read_bytes() == before


def test_predict_refuses_a_lying_header_before_decoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a 2 MB file claiming 1024^3 voxels grew ``predict`` to 11.9 GB of RAM."""
    from corpus import BAD

    entry = next(e for e in BAD if e.name == "bad-lying-header")
    path = entry.build(tmp_path)
    out = tmp_path / "labels.nii.gz"
    assert main(["predict", str(path), "--model", "ct-threshold", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 536,870,912 voxels" in err and "--max-voxels" in err
    assert not out.exists()
    # A lower limit refuses a normal image too, naming the flag.
    scan = _scan(tmp_path / "scan.nii.gz")
    assert main(["predict", str(scan), "--model", "ct-threshold", "--out", str(out),
                 "--max-voxels", "100"]) == 1  # fmt: skip
    assert "over the limit of 100 voxels" in capsys.readouterr().err


def test_seeding_a_huge_phantom_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["emulator", "seed", "--data", str(tmp_path), "--shape", "4000,4000,4000"])
    assert code == 2
    assert "over the limit of 134,217,728" in capsys.readouterr().err
    assert not (tmp_path / "connection.json").exists()


_HALF_WRITE = """
import sys, time
from autolabel.files import atomic_file
with atomic_file(sys.argv[1]) as stream:
    stream.write(b"half a label file")
    stream.flush()
    print("ready", flush=True)
    time.sleep(600)
"""


def _writer(target: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HALF_WRITE, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_temp_files_of_a_sigkilled_writer_are_removed_by_the_next_run(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    """Before: SIGKILL left ``*.tmp`` files behind for good."""
    results = tmp_path / "results"
    killed = _writer(results / "some-task" / "series-0-labels.nii.gz")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    live = _writer(results / "other-task" / "series-0-labels.nii.gz")
    try:
        left = sorted(p.parent.name for p in results.rglob(f"*{TEMP_SUFFIX}"))
        assert left == ["other-task", "some-task"]
        env = emulator.environment()
        done = subprocess.run(
            [sys.executable, "-m", "autolabel", "run", "--dry-run", "--limit", "1", "--quiet",
             "--no-previews", "--work", str(tmp_path / "work"), "--out", str(results)],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # The dead writer's leftover is gone; the live writer's file is left alone.
        assert [p.parent.name for p in results.rglob(f"*{TEMP_SUFFIX}")] == ["other-task"]
        assert not (results / "some-task" / "series-0-labels.nii.gz").exists()
    finally:
        live.kill()
        live.wait(timeout=30)

"""TotalSegmentator parity: a ``totalsegmentator`` card against the ``TotalSegmentator`` CLI.

The weights folder is laid out as TotalSegmentator lays it out (tests/framework_models.py),
for the ``body`` task in fast mode (one 6 mm nnU-Net model, plain nnUNetTrainer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("totalsegmentator")

from framework_models import (
    CONFIGURATION,
    PLANS,
    TRAINER,
    build_totalsegmentator_weights,
)

from autolabel.emulator.phantom import make_phantom
from autolabel.errors import ConfigError
from autolabel.inference import load_model

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

#: Runs a command in-process with an audit hook recording every socket connection.
_NO_NETWORK = """
import sys
seen = []
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):  # not a unix socket
        seen.append(str(args[1]))
    elif event == "socket.getaddrinfo":
        seen.append(str(args[0]))
sys.addaudithook(hook)
from autolabel.cli import main
code = main(sys.argv[1:])
print("CONNECTS", [a for a in seen if "127.0.0.1" not in a and "localhost" not in a])
sys.exit(code)
"""


@pytest.fixture(scope="module")
def weights(nnunet_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = nnunet_results / "Dataset901_Tiny" / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    return build_totalsegmentator_weights(
        tmp_path_factory.mktemp("totalseg-weights"), model, "body", fast=True
    )


def _env(weights: Path, home: Path) -> dict[str, str]:
    """TotalSegmentator's own variables: weights on disk, a home whose config sends no stats."""
    home.mkdir(exist_ok=True)
    (home / "config.json").write_text(
        json.dumps({"totalseg_id": "test", "send_usage_stats": False, "prediction_counter": 0})
    )
    return dict(os.environ, TOTALSEG_WEIGHTS_PATH=str(weights), TOTALSEG_HOME_DIR=str(home))


def _card(folder: Path) -> Path:
    card = folder / "model.toml"
    card.write_text(
        'name = "body"\nkind = "totalsegmentator"\nmodality = "CT"\n'
        '[options]\ntask = "body"\nfast = true\n'
    )
    return card


def test_totalsegmentator_card_equals_the_cli(weights: Path, tmp_path: Path) -> None:
    """Same labels, same grid as ``TotalSegmentator --fast -ta body``; no network attempt."""
    image = tmp_path / "ct.nii.gz"
    phantom = make_phantom((48, 40, 20), seed=3, fov_mm=(170.0, 140.0, 90.0))
    affine = np.diag([-170 / 48, -140 / 40, 4.5, 1.0])
    affine[:3, 3] = [80.0, 60.0, -40.0]
    nib.save(nib.Nifti1Image(phantom.hu.astype(np.int16), affine), image)
    env = _env(weights, tmp_path / "home")
    ours = tmp_path / "ours.nii.gz"
    run = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, "predict", str(image), "--model",
         str(_card(tmp_path)), "--out", str(ours), "--device", "cpu", "--no-png"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CONNECTS []" in run.stdout
    theirs = tmp_path / "theirs.nii.gz"
    subprocess.run(
        [str(BIN / "TotalSegmentator"), "-i", str(image), "-o", str(theirs), "--ml",
         "-ta", "body", "--fast", "-d", "cpu", "-q"],
        check=True, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    got, expected = nib.load(ours), nib.load(theirs)
    a, b = np.asanyarray(got.dataobj), np.asanyarray(expected.dataobj)
    assert a.shape == b.shape
    assert np.array_equal(a, b), f"{int((a != b).sum())} voxels differ"
    assert len(np.unique(b)) > 1
    assert np.allclose(got.affine, expected.affine, atol=1e-5)


def test_totalsegmentator_card_takes_the_class_map(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card without [labels] gets TotalSegmentator's own class names for the task."""
    from totalsegmentator.map_to_binary import class_map

    for key, value in _env(weights, tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    model = load_model(_card(tmp_path), device="cpu")
    assert dict(model.spec.labels) == dict(class_map["body"])
    assert dict(model.spec.labels) == {1: "body_trunc", 2: "body_extremities"}


def test_missing_totalsegmentator_weights_stay_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No weights on disk: one error naming the folder; nothing is downloaded or created."""
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(empty))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match=r"Dataset300_body_6mm_1559subj.*never downloads"):
        load_model(_card(tmp_path), device="cpu")
    assert list(empty.iterdir()) == []

"""The shipped models on real and known-answer data, through the Python API and the CLI.

Real data comes from Debian packages (installed by CI, never committed): Colin27 from
``mricron-data`` and the Cranium head CT of ``invesalius-examples``. Tests that need them
skip with the package name when they are absent.
"""

from __future__ import annotations

import json
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from autolabel.cli import main
from autolabel.emulator.phantom import make_phantom
from autolabel.errors import ModelError
from autolabel.imaging import load_volume, read_label_nifti, write_dicom_series, write_volume_nifti
from autolabel.inference import list_models, load_model
from autolabel.records import Volume

COLIN = Path("/usr/share/mricron/templates")
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MODELS = Path(__file__).resolve().parents[1] / "models"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Held-out phantom seeds: disjoint from train.py's TRAIN_SEEDS (1000-1047) and VAL_SEEDS (9000-9007).
HELD_OUT_SEEDS = (7001, 7002, 7003)

needs_colin = pytest.mark.skipif(
    not (COLIN / "ch2.nii.gz").is_file(),
    reason="Colin27 not installed: apt-get install mricron-data",
)
needs_cranium = pytest.mark.skipif(
    not CRANIUM.is_file(), reason="Cranium CT not installed: apt-get install invesalius-examples"
)
needs_phantom_unet = pytest.mark.skipif(
    not (MODELS / "phantom-unet" / "model.pt").is_file(),
    reason="phantom-unet weights not trained yet: run models/phantom-unet/train.py",
)


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice overlap of two masks."""
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def phantom_volume(shape: tuple[int, int, int], seed: int) -> tuple[Volume, npt.NDArray[np.uint8]]:
    """A phantom as a CT Volume (RAS affine) and its organ labels."""
    phantom = make_phantom(shape, seed=seed)
    volume = Volume(
        array=phantom.hu,
        affine=LPS_TO_RAS @ phantom.affine_lps,
        modality="CT",
        source=f"phantom {seed}",
    )
    return volume, phantom.labels


def load_cranium() -> tuple[Volume, npt.NDArray[np.bool_]]:
    """The Cranium CT ([i, j, k] = column, row, slice) and its shipped bone mask."""
    with tarfile.open(CRANIUM) as archive:
        members = {m.name.rsplit("/", 1)[-1]: m for m in archive.getmembers()}

        def read(name: str) -> bytes:
            stream = archive.extractfile(members[name])
            if stream is None:
                raise FileNotFoundError(name)
            return stream.read()

        meta = plistlib.loads(read("main.plist"))
        shape = tuple(meta["matrix"]["shape"])
        hu = np.frombuffer(read("matrix.dat"), np.int16).reshape(shape)
        padded = tuple(s + 1 for s in shape)
        # InVesalius stores masks with one extra leading row, column and slice.
        bone = np.frombuffer(read("mask_0.dat"), np.uint8).reshape(padded)[1:, 1:, 1:] > 127
    sx, sy, sz = (float(v) for v in meta["spacing"])
    volume = Volume(
        array=np.ascontiguousarray(hu.transpose(2, 1, 0)),
        affine=np.diag([-sx, -sy, sz, 1.0]),
        modality="CT",
        source="Cranium.inv3",
    )
    return volume, np.ascontiguousarray(bone.transpose(2, 1, 0))


# -- the shipped cards ----------------------------------------------------------------------


def test_shipped_cards_are_listed_with_their_labels() -> None:
    """list_models finds the three shipped cards with their default categories."""
    cards = {card.name: card for card in list_models()}
    assert {"ct-threshold", "phantom-unet", "deepbet-brain"} <= set(cards)
    assert dict(cards["ct-threshold"].categories) == {1: "Body", 2: "Lung", 3: "Bone"}
    assert dict(cards["phantom-unet"].categories) == {
        1: "Liver",
        2: "Spleen",
        3: "Kidney",
        4: "Lung",
    }
    assert cards["ct-threshold"].availability() == (True, "ok")


@needs_cranium
def test_ct_threshold_bone_on_real_head_ct() -> None:
    """ct-threshold's bone reaches Dice >= 0.90 against Cranium's shipped bone mask."""
    volume, bone = load_cranium()
    labels = load_model("ct-threshold").predict(volume)
    assert labels.shape == volume.shape
    score = dice(labels == 3, bone)
    assert score >= 0.90, score
    body_ml = float((labels > 0).sum()) * float(np.prod(volume.spacing)) / 1000
    assert 2000 < body_ml < 5000  # a head, not the scanner table or the air around it


def test_ct_threshold_on_phantom_lungs_and_bone() -> None:
    """On a phantom, ct-threshold finds the lungs and the bone where the ground truth is."""
    volume, truth = phantom_volume((96, 96, 64), seed=77)
    labels = load_model("ct-threshold").predict(volume)
    assert dice(labels == 2, truth == 4) >= 0.90
    assert dice(labels == 3, truth == 5) >= 0.80
    assert not labels[0, 0, :].any()  # the corner is air, outside the body


def test_ct_threshold_labels_do_not_depend_on_slabs_or_memory_order() -> None:
    """ct-threshold works slab by slab to stay within ~1.5x the volume's memory (issue #16):
    cutting a phantom into 3-slice slabs gives the labels of one slab, and an F-ordered copy
    of the volume (as the DICOM and NIfTI readers give it) the labels of the C-ordered one."""
    import sys

    volume, _ = phantom_volume((96, 96, 40), seed=78)
    model = load_model("ct-threshold")
    whole = model.predict(volume)
    plugin = sys.modules[type(model._call.__self__).__module__]  # type: ignore[attr-defined]
    default = plugin._SLAB_VOXELS
    plugin._SLAB_VOXELS = 96 * 96 * 3
    try:
        slabbed = model.predict(volume)
        f_order = Volume(array=np.asfortranarray(volume.array), affine=volume.affine)
        from_f = model.predict(f_order)
    finally:
        plugin._SLAB_VOXELS = default
    assert set(np.unique(whole).tolist()) == {0, 1, 2, 3}
    assert np.array_equal(slabbed, whole)
    assert np.array_equal(from_f, whole)


@needs_colin
def test_deepbet_brain_on_colin27() -> None:
    """deepbet-brain reaches Dice >= 0.90 against Colin27's brain-extracted reference."""
    pytest.importorskip("deepbet", reason="pip install 'autolabel[deepbet]'")
    volume = load_volume(COLIN / "ch2.nii.gz")
    reference = load_volume(COLIN / "ch2bet.nii.gz").array > 0
    model = load_model("deepbet-brain", device="cpu")
    assert len(model.spec.weights_sha256) == 64
    mask = model.predict(volume)
    score = dice(mask == 1, reference)
    assert score >= 0.90, score


def test_deepbet_brain_without_deepbet_says_what_to_install() -> None:
    """Where deepbet is missing, loading the card names the extra to install."""
    import importlib.util

    if importlib.util.find_spec("deepbet") is not None:
        pytest.skip("deepbet is installed here")
    with pytest.raises(ModelError, match=r"autolabel\[deepbet\]"):
        load_model("deepbet-brain")


@needs_phantom_unet
def test_phantom_unet_dice_on_held_out_phantoms() -> None:
    """phantom-unet reaches Dice >= 0.85 per organ on unseen phantoms of another grid.

    The phantoms are 112 x 112 x 80 voxels (3.2 x 3.2 x 3.75 mm), so the full path runs:
    resampling to 5 mm, sliding window (Gaussian, 2 windows per batch), the default
    autocast, resampling back and postprocessing.
    """
    model = load_model("phantom-unet", device="cpu")
    scores: dict[str, list[float]] = {name: [] for name in model.spec.labels.values()}
    for seed in HELD_OUT_SEEDS:
        volume, truth = phantom_volume((112, 112, 80), seed)
        labels = model.predict(volume)
        assert labels.shape == volume.shape
        for label_id, name in model.spec.labels.items():
            scores[name].append(dice(labels == label_id, truth == label_id))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    assert min(means.values()) >= 0.85, means
    assert model.events == []


@needs_phantom_unet
def test_phantom_unet_sliding_window_matches_whole_volume() -> None:
    """With a trained net, windowed inference agrees with one whole-volume pass (>= 99%)."""
    import torch

    from autolabel.inference.preprocess import to_model_grid
    from autolabel.inference.sliding_window import sliding_window_labels

    model = load_model("phantom-unet", device="cpu", autocast="off")
    volume, _ = phantom_volume((72, 72, 60), seed=7004)  # already the 5 mm training grid
    image, _ = to_model_grid(volume, model.card.preprocess)
    windowed = sliding_window_labels(
        model.net, image, classes=5, patch=(48, 48, 32), overlap=0.5, batch=2
    )
    with torch.inference_mode():
        whole = model.net(image[None]).argmax(1)[0].to(torch.uint8)
    agreement = float((windowed == whole).float().mean())
    assert agreement >= 0.99, agreement


# -- command line ---------------------------------------------------------------------------


def test_cli_models_lists_cards(capsys: pytest.CaptureFixture[str]) -> None:
    """`autolabel models --json` lists every card with kind, labels and availability."""
    assert main(["models", "--json"]) == 0
    report = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert report["ct-threshold"]["kind"] == "python"
    assert report["ct-threshold"]["available"] is True
    assert report["phantom-unet"]["labels"]["2"] == "spleen"
    assert main(["models"]) == 0
    assert "deepbet-brain" in capsys.readouterr().out


def test_cli_predict_on_dicom_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`autolabel predict DICOM_DIR` writes labels on the series' grid, a PNG and a summary."""
    phantom = make_phantom((64, 64, 40), seed=5)
    write_dicom_series(phantom.hu, phantom.affine_lps, tmp_path / "series")
    out = tmp_path / "out" / "labels.nii.gz"
    code = main(
        [
            "predict",
            str(tmp_path / "series"),
            "--model",
            "ct-threshold",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    volume = load_volume(tmp_path / "series")
    labels, affine = read_label_nifti(out)
    assert labels.shape == volume.shape
    assert np.allclose(affine, volume.affine, atol=1e-4)
    lung = {row["name"]: row for row in report["labels"]}["lung"]
    assert lung["category"] == "Lung"
    assert lung["voxels"] == int((labels == 2).sum()) > 0
    # The series loads in RedBrick's layout (row axis reversed); map the truth the same way.
    assert np.array_equal(volume.array[:, ::-1, :], phantom.hu)
    assert dice(np.asarray(labels)[:, ::-1, :] == 2, phantom.labels == 4) >= 0.95
    assert Path(report["png"]).is_file() and Path(report["png"]).stat().st_size > 1000


def test_cli_predict_on_nifti_with_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`autolabel predict FILE.nii.gz` prints a per-label table and writes the label file."""
    volume, _ = phantom_volume((48, 48, 32), seed=6)
    image = write_volume_nifti(volume, tmp_path / "ct.nii.gz")
    out = tmp_path / "ct_labels.nii.gz"
    code = main(["predict", str(image), "--model", "ct-threshold", "--out", str(out), "--no-png"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Bone" in printed and "body" in printed
    assert out.is_file() and not (tmp_path / "ct_labels.png").exists()


def test_cli_predict_unknown_model_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown model name exits 2 with the known names in one line."""
    volume, _ = phantom_volume((16, 16, 16), seed=1)
    image = write_volume_nifti(volume, tmp_path / "ct.nii.gz")
    code = main(["predict", str(image), "--model", "nope", "--out", str(tmp_path / "x.nii.gz")])
    assert code == 2
    assert "ct-threshold" in capsys.readouterr().err

"""The model contract, cards, runners, sliding window and resampling of autolabel.inference."""

from __future__ import annotations

import hashlib
import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autolabel.errors import BadModelOutputError, ConfigError, ModelError
from autolabel.inference import ModelSpec, find_card, load_model, read_card
from autolabel.inference.device import autocast_dtype, resolve_device
from autolabel.inference.postprocess import fill_holes, largest_component, remove_small
from autolabel.inference.preprocess import Reorientation, resample_labels, to_model_grid
from autolabel.inference.sliding_window import sliding_window_labels, window_starts
from autolabel.records import Volume


def _volume(shape: tuple[int, int, int] = (20, 18, 12), **kwargs: object) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    return Volume(array=array, affine=np.diag([-2.0, -2.0, 3.0, 1.0]), **kwargs)  # type: ignore[arg-type]


def _plugin_card(tmp_path: Path, body: str, *, labels: str = '1 = "a"\n2 = "b"') -> Path:
    """A python-kind card whose entry is ``plugin:predict`` with ``body`` as its code."""
    (tmp_path / "plugin.py").write_text(textwrap.dedent(body))
    card = tmp_path / "model.toml"
    card.write_text(
        f'name = "plugin-test"\nversion = "0.1"\nkind = "python"\nentry = "plugin:predict"\n'
        f"[labels]\n{labels}\n"
    )
    return card


# -- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "categories", "message"),
    [
        ({}, {}, "no labels"),
        ({0: "background"}, {}, "label id 0"),
        ({70000: "big"}, {}, "label id 70000"),
        ({1: "a", 2: "a"}, {}, "duplicate"),
        ({1: ""}, {}, "empty"),
        ({1: "a"}, {2: "B"}, "categories map label ids [2]"),
    ],
)
def test_bad_spec_is_refused(
    labels: dict[int, str], categories: dict[int, str], message: str
) -> None:
    """A spec with bad ids, names or category keys cannot be built."""
    with pytest.raises(BadModelOutputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelSpec(name="m", version="1", labels=labels, categories=categories)


def test_spec_is_frozen_and_maps_categories() -> None:
    """Specs are immutable; a label without a default category falls back to its name."""
    spec = ModelSpec(name="m", version="1", labels={1: "liver", 300: "x"}, categories={1: "Liver"})
    assert spec.category_of(1) == "Liver"
    assert spec.category_of(300) == "x"
    assert spec.label_dtype is np.uint16
    with pytest.raises(TypeError):
        spec.labels[2] = "y"  # type: ignore[index]


# -- output validation through a real python plug-in ---------------------------------------


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("np.zeros(volume.shape, np.float32)", "dtype float32"),
        ("np.zeros(volume.shape, bool)", "dtype bool"),
        ("np.zeros((2, 2, 2), np.uint8)", r"shape \(2, 2, 2\)"),
        ("np.full(volume.shape, 3, np.uint8)", r"values \[3\]"),
        ("np.full(volume.shape, -1, np.int16)", r"values \[-1\]"),
        ("volume.array.tolist()", "not a numpy array"),
    ],
)
def test_contract_violations_raise_naming_the_model(
    tmp_path: Path, returned: str, message: str
) -> None:
    """Wrong dtype, shape or values from a model raise BadModelOutputError with its name."""
    card = _plugin_card(
        tmp_path, f"import numpy as np\ndef predict(volume):\n    return {returned}\n"
    )
    model = load_model(card, device="cpu")
    with pytest.raises(BadModelOutputError, match=f"'plugin-test'.*{message}"):
        model.predict(_volume(source="case-7"))


def test_valid_plugin_output_passes_unchanged(tmp_path: Path) -> None:
    """A plug-in returning declared labels on the volume's grid gets its map back."""
    card = _plugin_card(
        tmp_path,
        """
        import numpy as np
        def predict(volume):
            out = np.zeros(volume.shape, np.uint8)
            out[volume.array > 0] = 1
            out[volume.array > 500] = 2
            return out
        """,
    )
    volume = _volume()
    labels = load_model(card, device="cpu").predict(volume)
    assert labels.shape == volume.shape
    assert np.array_equal(labels == 2, volume.array > 500)


def test_a_value_between_declared_ids_is_refused_in_any_memory_order(tmp_path: Path) -> None:
    """Labels {1, 3}: a 2 in the last slice of an F-ordered or a flipped map is caught (the
    range check alone passes it), and a map of only 0, 1 and 3 passes unchanged."""
    card = _plugin_card(
        tmp_path,
        """
        import numpy as np
        def predict(volume):
            out = np.zeros(volume.shape, np.uint8, order="F")
            out[volume.array > 0] = 3
            out[volume.array > 500] = 1
            if volume.source == "bad-f":
                out[-1, -1, -1] = 2
            if volume.source == "bad-flipped":
                out = np.flip(np.ascontiguousarray(out), axis=2)
                out[0, 0, 0] = 2
            return out
        """,
        labels='1 = "a"\n3 = "c"',
    )
    model = load_model(card, device="cpu")
    for source in ("bad-f", "bad-flipped"):
        with pytest.raises(BadModelOutputError, match=r"values \[2\]"):
            model.predict(_volume(source=source))
    labels = model.predict(_volume(source="good"))
    assert set(np.unique(labels).tolist()) == {0, 1, 3}


def test_plugin_exception_becomes_model_error(tmp_path: Path) -> None:
    """A crash inside a model is a ModelError naming the model and the volume."""
    card = _plugin_card(tmp_path, "def predict(volume):\n    raise RuntimeError('boom')\n")
    with pytest.raises(ModelError, match="'plugin-test' failed on case-1: RuntimeError: boom"):
        load_model(card, device="cpu").predict(_volume(source="case-1"))


def test_wrong_modality_is_refused(tmp_path: Path) -> None:
    """A CT model refuses an MR volume rather than labelling it."""
    card = _plugin_card(tmp_path, "def predict(volume):\n    return None\n")
    card.write_text(card.read_text().replace('kind = "python"', 'kind = "python"\nmodality = "CT"'))
    with pytest.raises(ModelError, match="expects CT"):
        load_model(card, device="cpu").predict(_volume(modality="MR"))


# -- cards ----------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_known_ones() -> None:
    """An unknown name is a ConfigError that names the models that do exist."""
    with pytest.raises(ConfigError, match="ct-threshold"):
        find_card("no-such-model")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('kind = "keras"', "kind 'keras'"),
        ('kind = "python"\n[preprocess]\norientation = "LPX"', "orientation"),
        ('kind = "python"\n[preprocess]\nintensity = "minmax"', "intensity"),
        ('kind = "python"\n[sliding_window]\noverlap = 1.0', "overlap"),
        ('kind = "python"\n[sliding_window]\npatch = [64, 64]', "three positive"),
        ('kind = "python"\n[postprocess]\nfill_holes = [9]', r"labels \[9\]"),
        ('kind = "python"\n[runtime]\nautocast = "int8"', "autocast"),
    ],
)
def test_malformed_card_is_a_config_error(tmp_path: Path, extra: str, message: str) -> None:
    """Card mistakes are caught when the card is read, with the card's path."""
    head, _, tail = extra.partition("\n")
    path = tmp_path / "model.toml"
    path.write_text(f'name = "x"\n{head}\n[labels]\n1 = "a"\n{tail}\n')
    with pytest.raises(ConfigError, match=message):
        read_card(path)


def test_models_env_folder_is_searched_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$AUTOLABEL_MODELS adds folders of cards found by name."""
    (tmp_path / "plugin-test").mkdir()
    _plugin_card(tmp_path / "plugin-test", "def predict(volume):\n    return None\n")
    monkeypatch.setenv("AUTOLABEL_MODELS", str(tmp_path))
    assert find_card("plugin-test") == tmp_path / "plugin-test" / "model.toml"


# -- optional frameworks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "module", "extra"),
    [
        ("nnunet", "nnunetv2", "nnunet"),
        ("totalsegmentator", "totalsegmentator", "totalsegmentator"),
    ],
)
def test_missing_framework_names_the_extra(
    tmp_path: Path, kind: str, module: str, extra: str
) -> None:
    """Loading an nnU-Net/TotalSegmentator card without the package says what to install."""
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    (tmp_path / "weights").mkdir()
    card = tmp_path / "model.toml"
    card.write_text(
        f'name = "ext"\nkind = "{kind}"\n[labels]\n1 = "a"\n[options]\nfolder = "weights"\n'
    )
    with pytest.raises(ModelError, match=rf"pip install 'autolabel\[{extra}\]'"):
        load_model(card, device="cpu")


# -- torchscript runner, sliding window, resampling -----------------------------------------


class _Pointwise(nn.Module):
    """Per-voxel network: sliding-window bookkeeping must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 8, 1), nn.ReLU(), nn.Conv3d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def test_window_starts_cover_every_voxel_flush_to_the_border() -> None:
    """Windows tile each axis completely, the last one ending at the border."""
    for size in (1, 7, 31, 64, 65, 130):
        for patch in (8, 32, 64):
            for overlap in (0.0, 0.25, 0.5):
                starts = window_starts(size, patch, overlap)
                covered = np.zeros(max(size, patch), bool)
                for start in starts:
                    covered[start : start + patch] = True
                assert covered[:size].all()
                assert starts[-1] + patch == max(size, patch)


@pytest.mark.parametrize(("patch", "batch"), [((8, 8, 8), 1), ((16, 12, 8), 3), ((40, 40, 40), 2)])
def test_sliding_window_equals_whole_volume_inference(
    patch: tuple[int, int, int], batch: int
) -> None:
    """Blended windows (overlap, Gaussian, flush last window, padding) equal one full pass."""
    torch.manual_seed(0)
    net = _Pointwise().eval().to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    image = torch.randn(1, 30, 26, 19)
    with torch.inference_mode():
        whole = net(image[None]).argmax(1)[0].to(torch.uint8)
    windowed = sliding_window_labels(net, image, classes=4, patch=patch, overlap=0.5, batch=batch)
    assert windowed.shape == whole.shape
    assert torch.equal(windowed, whole)


def test_torchscript_card_predicts_on_the_volume_grid(tmp_path: Path) -> None:
    """A TorchScript card with resampling and reorientation returns labels on the input grid."""
    torch.manual_seed(0)
    scripted = torch.jit.script(_Pointwise().eval())
    scripted.save(str(tmp_path / "net.pt"))
    (tmp_path / "model.toml").write_text(
        'name = "ts"\nkind = "torchscript"\nweights = "net.pt"\n'
        '[labels]\n1 = "a"\n2 = "b"\n3 = "c"\n'
        '[preprocess]\norientation = "RAS"\nspacing = [3.0, 3.0, 3.0]\nintensity = "zscore"\n'
        "[sliding_window]\npatch = [8, 8, 8]\nbatch = 4\n"
    )
    model = load_model(tmp_path / "model.toml", device="cpu", autocast="off")
    volume = _volume((21, 17, 9))
    labels = model.predict(volume)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    digest = hashlib.sha256((tmp_path / "net.pt").read_bytes()).hexdigest()
    assert model.spec.weights_sha256 == digest
    assert model.events == []
    other = _volume((12, 30, 25))  # the same warm model serves the next volume of any shape
    assert model.predict(other).shape == other.shape


def test_torchscript_probabilities_are_a_softmax_whose_argmax_is_predict(tmp_path: Path) -> None:
    """Asked for, a TorchScript card gives per-class probabilities on the volume grid
    (reoriented, windows blended): they sum to 1 and their argmax is ``predict``'s labels."""
    torch.manual_seed(0)
    torch.jit.script(_Pointwise().eval()).save(str(tmp_path / "net.pt"))
    (tmp_path / "model.toml").write_text(
        'name = "ts"\nkind = "torchscript"\nweights = "net.pt"\n'
        '[labels]\n1 = "a"\n2 = "b"\n3 = "c"\n'
        '[preprocess]\norientation = "RAS"\nintensity = "zscore"\n'
        "[sliding_window]\npatch = [8, 8, 8]\noverlap = 0.5\nbatch = 4\n"
    )
    model = load_model(tmp_path / "model.toml", device="cpu", autocast="off")
    volume = _volume((21, 17, 9))
    labels, probabilities = model.predict_probabilities(volume)
    assert probabilities.shape == (4, *volume.shape) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(labels, model.predict(volume))
    assert np.array_equal(probabilities.argmax(0), labels)
    assert len(np.unique(labels)) > 1


def test_confidence_leaves_predicts_labels_unchanged_on_a_resampled_grid() -> None:
    """Measuring confidence never changes a label: phantom-unet (a 5 mm model grid, so the
    volume is resampled both ways) gives ``predict``'s map voxel for voxel, and a
    confidence in (0, 1] for each label present in it."""
    from autolabel.emulator.phantom import make_phantom

    phantom = make_phantom((48, 40, 24), seed=7)
    volume = Volume(array=phantom.hu, affine=phantom.affine_lps, modality="CT")
    model = load_model("phantom-unet", device="cpu")
    labels, confidence = model.predict_with_confidence(volume)
    assert np.array_equal(labels, model.predict(volume))
    present = {int(v) for v in np.unique(labels)} - {0}
    assert confidence is not None and set(confidence) <= present and confidence
    assert all(0.0 < c.confidence <= 1.0 for c in confidence.values())


def test_a_runner_without_probabilities_says_so(tmp_path: Path) -> None:
    """A python plug-in gives no probabilities: a ModelError naming the model."""
    card = _plugin_card(
        tmp_path,
        "import numpy as np\ndef predict(volume):\n    return np.zeros(volume.shape, np.uint8)\n",
    )
    model = load_model(card, device="cpu")
    with pytest.raises(ModelError, match="does not give class probabilities"):
        model.predict_probabilities(_volume())


def test_reorientation_round_trip_is_exact() -> None:
    """Reorienting to any axis codes and back gives the same array."""
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for source in ("LPS", "RAS", "SLP", "AIR"):
        for target in ("LPS", "RAS", "PSL"):
            turn = Reorientation.between(source, target)
            assert np.array_equal(turn.invert(turn.apply(array)), array)
    assert Reorientation.between("LPS", "RAS").apply(array)[0, 0, 0] == array[-1, -1, 0]


def test_resampling_round_trip_keeps_the_grid() -> None:
    """Labels resampled to the model grid and back land on the input's exact grid."""
    shape = (48, 40, 20)
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    ball = ((i - 24) / 14.0) ** 2 + ((j - 20) / 12.0) ** 2 + ((k - 10) / 6.0) ** 2 <= 1
    affine = np.diag([1.5, 1.5, 4.0, 1.0])  # RAS; the model wants LPS at 4 mm
    volume = Volume(array=ball.astype(np.int16) * 100, affine=affine)
    from autolabel.inference.card import Preprocessing

    image, grid = to_model_grid(volume, Preprocessing(orientation="LPS", spacing=(4.0, 4.0, 4.0)))
    assert tuple(image.shape) == (1, 18, 15, 20)
    model_labels = (image[0] > 50).to(torch.uint8)  # the "model": a threshold on its grid
    back = grid.to_volume_grid(model_labels)
    assert back.shape == shape
    dice = 2 * np.logical_and(back == 1, ball).sum() / ((back == 1).sum() + ball.sum())
    assert dice > 0.93
    same = resample_labels(torch.from_numpy(ball.astype(np.uint8)), shape)
    assert np.array_equal(same.numpy(), ball)


def test_postprocess_steps() -> None:
    """Largest component, hole filling and minimum size do what their names say."""
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[5, 5, 5] = 0  # a hole
    labels[15:17, 15:17, 15:17] = 1  # a second, smaller component
    labels[0, 19, 0] = 2  # a speck
    largest_component(labels, 1)
    assert labels[15, 15, 15] == 0 and labels[3, 3, 3] == 1
    fill_holes(labels, 1)
    assert labels[5, 5, 5] == 1
    remove_small(labels, 2)
    assert labels[0, 19, 0] == 0 and (labels == 1).sum() == 512


# -- devices --------------------------------------------------------------------------------


def test_device_names() -> None:
    """auto/cpu resolve; junk and absent CUDA devices are configuration errors."""
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not auto, cpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda:0")
    assert autocast_dtype("off", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        autocast_dtype("fp16", torch.device("cpu"))

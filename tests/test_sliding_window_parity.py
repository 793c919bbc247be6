"""Our sliding window gives MONAI's ``sliding_window_inference`` result (issue #16).

The network is a small TorchScript Conv-BatchNorm-ReLU stack with 3x3x3 kernels, so each
window's border voxels see zero padding and the blending weights matter. It runs loaded
from a card, as the product runs it: frozen on the CPU (BatchNorm folded into the
convolution). MONAI gets the card's network as loaded. Same windows, same overlap, same
Gaussian (or constant) blending: the blended probabilities agree to float rounding and
the labels voxel for voxel (bar exact ties).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autolabel.inference import load_model
from autolabel.inference.runners import TorchModel
from autolabel.inference.sliding_window import (
    sliding_window_labels,
    sliding_window_probabilities,
)
from autolabel.records import Volume

monai_inferers = pytest.importorskip("monai.inferers")

_CLASSES = 3


class _ConvNet(nn.Module):
    """Conv3d(3x3x3) -> BatchNorm -> ReLU, twice, then a 1x1x1 head: a border-sensitive net."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 6, 3, padding=1),
            nn.BatchNorm3d(6),
            nn.ReLU(),
            nn.Conv3d(6, 6, 3, padding=1),
            nn.BatchNorm3d(6),
            nn.ReLU(),
            nn.Conv3d(6, _CLASSES, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def _card(tmp_path: Path, *, patch: str, overlap: float, blend: str) -> Path:
    """A torchscript card of :class:`_ConvNet` with non-trivial BatchNorm statistics."""
    torch.manual_seed(7)
    net = _ConvNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    torch.jit.save(torch.jit.script(net.eval()), str(tmp_path / "net.pt"))
    card = tmp_path / "model.toml"
    card.write_text(
        'name = "parity-net"\nversion = "1"\nkind = "torchscript"\nweights = "net.pt"\n'
        '[labels]\n1 = "a"\n2 = "b"\n'
        '[preprocess]\nintensity = "window"\nwindow = [-1000.0, 1000.0]\n'
        f"[sliding_window]\npatch = {patch}\noverlap = {overlap}\n"
        f'blend = "{blend}"\nsigma_scale = 0.125\nbatch = 3\n'
        '[runtime]\nautocast = "off"\n'
        f"[options]\nclasses = {_CLASSES}\n"
    )
    return card


def _monai_logits(
    net: torch.nn.Module,
    image: torch.Tensor,
    patch: tuple[int, int, int],
    overlap: float,
    blend: str,
) -> torch.Tensor:
    """MONAI's blended logits ``(C, X, Y, Z)`` for ``image`` ``(1, X, Y, Z)``."""
    with torch.inference_mode():
        logits = monai_inferers.sliding_window_inference(
            image[None],
            roi_size=patch,
            sw_batch_size=2,
            predictor=net,
            overlap=overlap,
            mode=blend,
            sigma_scale=0.125,
        )
    return logits[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("patch", "overlap", "blend"),
    [
        ((16, 16, 12), 0.25, "gaussian"),
        ((16, 12, 10), 0.5, "gaussian"),
        ((16, 16, 12), 0.25, "constant"),
    ],
)
def test_blended_probabilities_and_labels_equal_monais(
    tmp_path: Path, patch: tuple[int, int, int], overlap: float, blend: str
) -> None:
    """Probabilities within 1e-4 of MONAI's softmax, labels equal on >= 99.99% of voxels."""
    model = load_model(_card(tmp_path, patch=str(list(patch)), overlap=overlap, blend=blend))
    assert isinstance(model, TorchModel)
    cpu = torch.device("cpu")
    product_net = model.network(cpu)
    assert product_net is not model.net  # the product runs the frozen network on the CPU
    torch.manual_seed(3)
    image = torch.randn(1, 40, 37, 29)
    settings = {"classes": _CLASSES, "patch": patch, "overlap": overlap, "blend": blend}
    ours = sliding_window_probabilities(product_net, image, batch=3, **settings)
    theirs = torch.softmax(_monai_logits(model.net, image, patch, overlap, blend), dim=0)
    assert ours.shape == theirs.shape == (_CLASSES, 40, 37, 29)
    assert float((ours - theirs).abs().max()) < 1e-4
    labels = sliding_window_labels(product_net, image, batch=3, **settings)
    agree = float((labels == theirs.argmax(0).to(torch.uint8)).float().mean())
    assert agree >= 0.9999


def test_predict_labels_equal_monai_on_the_preprocessed_volume(tmp_path: Path) -> None:
    """A whole ``predict`` (window intensities, frozen network, our windows) labels a volume
    as MONAI's sliding window over the same network and intensities does."""
    patch = (16, 16, 12)
    model = load_model(_card(tmp_path, patch=str(list(patch)), overlap=0.25, blend="gaussian"))
    assert isinstance(model, TorchModel)
    rng = np.random.default_rng(11)
    hu = rng.normal(0.0, 500.0, size=(36, 33, 27)).astype(np.int16)
    volume = Volume(array=hu, affine=np.diag([-1.0, -1.0, 1.0, 1.0]), source="parity volume")
    labels = model.predict(volume)
    image = torch.from_numpy((np.clip(hu.astype(np.float32), -1000, 1000) + 1000) / 2000)[None]
    theirs = _monai_logits(model.net, image, patch, 0.25, "gaussian").argmax(0).numpy()
    assert labels.shape == volume.shape
    assert float((labels == theirs).mean()) >= 0.9999

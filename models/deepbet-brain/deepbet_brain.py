"""The ``deepbet-brain`` model: deepbet's two TorchScript networks behind our contract.

The weights are the ones inside the installed ``deepbet`` wheel (``data/models/`` beside
the package); nothing is downloaded. The steps follow deepbet 1.0.2's published method:

1. reorient to RAS (axis permutation and flips only);
2. nearest-resize to 128^3; intensity limits = 0.5 and 99.5 percentiles of that image;
3. normalise: scale the limits to [0, 1], clip, z-score, then ``* 0.226 + 0.449``;
4. the bounding-box net gives a coarse brain mask (channel 1 > 0.5), reduced to its largest
   component; its extent (where a slab's mean exceeds 0.02) plus a 10% margin per side,
   scaled to the full grid, is the crop;
5. the crop, nearest-resized to 256^3 and normalised with the same limits, goes through the
   main net; channel 1 is resized back to the crop and thresholded at 0.5;
6. largest component and hole filling inside the crop; back to the input's orientation.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from autolabel.errors import ModelError
from autolabel.inference.card import sha256_file
from autolabel.inference.device import autocast_dtype, inference_context, resolve_device
from autolabel.inference.postprocess import fill_holes, largest_component
from autolabel.inference.preprocess import Reorientation
from autolabel.records import Volume


def weights_folder() -> Path:
    """``site-packages/data/models`` of the installed deepbet wheel."""
    found = importlib.util.find_spec("deepbet")
    if found is None or found.origin is None:
        raise ModelError("deepbet is not installed: pip install 'autolabel[deepbet]'")
    folder = Path(found.origin).resolve().parents[1] / "data" / "models"
    if not (folder / "model.pt").is_file() or not (folder / "bbox_model.pt").is_file():
        raise ModelError(f"deepbet is installed but its weights are missing from {folder}")
    return folder


def _normalise(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    x = ((x - low) / (high - low)).clamp(0.0, 1.0)
    return 0.226 * (x - x.mean()) / x.std() + 0.449


def _extent(mask: torch.Tensor, shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    boxes = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        inside = torch.nonzero(mask.mean(others) > 0.02).flatten()
        if inside.numel() == 0:
            raise ModelError("deepbet found no brain in this image (is it a T1w head MRI?)")
        scale = shape[axis] / mask.shape[axis]
        centre = scale * (float(inside.min()) + float(inside.max()) + 1) / 2
        size = 1.2 * scale * (float(inside.max()) + 1 - float(inside.min()))
        lo, hi = int(round(centre) - round(size) / 2), int(round(centre) + round(size) / 2)
        boxes.append(slice(max(0, lo), min(shape[axis], hi)))
    return (boxes[0], boxes[1], boxes[2])


class DeepbetBrain:
    """Loads both networks once; ``predict`` returns 1 inside the brain, 0 elsewhere."""

    def __init__(self, *, card: Any, device: str) -> None:
        folder = weights_folder()
        self.device = resolve_device(device)
        self.dtype = autocast_dtype(str(card.autocast), self.device)
        with warnings.catch_warnings():  # deepbet ships TorchScript; torch 2.13 flags jit.load
            warnings.simplefilter("ignore", DeprecationWarning)
            self.bbox_net = torch.jit.load(str(folder / "bbox_model.pt"), map_location=self.device)  # type: ignore[no-untyped-call]
            self.net = torch.jit.load(str(folder / "model.pt"), map_location=self.device)  # type: ignore[no-untyped-call]
        self.bbox_net.eval()
        self.net.eval()
        self.weights_sha256 = sha256_file(folder / "model.pt")

    def _run(self, net: Any, x: torch.Tensor) -> torch.Tensor:
        with inference_context(self.device, self.dtype):
            return net(x[None, None].to(self.device))[0, 1].float().cpu()  # type: ignore[no-any-return]

    def predict(self, volume: Volume) -> npt.NDArray[np.uint8]:
        """The brain mask on the volume's grid."""
        turn = Reorientation.between(volume.orientation, "RAS")
        image = torch.from_numpy(np.ascontiguousarray(turn.apply(volume.array), dtype=np.float32))
        image = torch.nan_to_num(image)
        shape = tuple(image.shape)
        small = F.interpolate(image[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
        low, high = (
            float(q) for q in torch.quantile(small.flatten(), torch.tensor([0.005, 0.995]))
        )
        coarse = (self._run(self.bbox_net, _normalise(small, low, high)) > 0.5).numpy()
        coarse_u8 = coarse.astype(np.uint8)
        largest_component(coarse_u8, 1)
        box = _extent(torch.from_numpy(coarse_u8).float(), shape)
        crop = image[box]
        resized = F.interpolate(crop[None, None], (256, 256, 256), mode="nearest-exact")[0, 0]
        prob = self._run(self.net, _normalise(resized, low, high))
        back = F.interpolate(prob[None, None], tuple(crop.shape), mode="nearest-exact")[0, 0]
        mask = np.zeros(shape, dtype=np.uint8)
        mask[box] = (back > 0.5).numpy()
        largest_component(mask, 1)
        fill_holes(mask, 1)
        return np.asfortranarray(turn.invert(mask))

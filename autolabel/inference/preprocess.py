"""Bring a volume to a model's grid and intensity range, and label maps back.

:func:`to_model_grid` reorients (axis permutation and flips only, no interpolation), then
resamples to the card's spacing with torch (trilinear; scipy is 30x slower here,
perf-limits.md §3). :meth:`ModelGrid.to_volume_grid` undoes both on a label map (nearest),
so the result lands exactly on the input's voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from autolabel.inference.card import Preprocessing
from autolabel.records import Volume

_PAIRS = {"L": "LR", "R": "LR", "P": "PA", "A": "PA", "I": "IS", "S": "IS"}


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation then flips taking an array from one set of axis codes to another.

    ``apply(a) = flip(transpose(a, perm), flips)``; ``invert`` undoes it exactly.
    """

    perm: tuple[int, int, int]
    flips: tuple[int, ...]

    @classmethod
    def between(cls, source: str, target: str) -> Reorientation:
        """The reorientation from axis codes ``source`` (e.g. ``"LPS"``) to ``target``.

        >>> Reorientation.between("LPS", "RAS")
        Reorientation(perm=(0, 1, 2), flips=(0, 1))
        >>> Reorientation.between("SLP", "LPS")
        Reorientation(perm=(1, 2, 0), flips=())
        """
        if not target:
            return cls((0, 1, 2), ())
        perm: list[int] = []
        flips: list[int] = []
        for axis, letter in enumerate(target):
            found = [i for i, s in enumerate(source) if _PAIRS[s] == _PAIRS[letter]]
            if len(found) != 1:
                raise ValueError(f"cannot reorient {source!r} to {target!r}")
            perm.append(found[0])
            if source[found[0]] != letter:
                flips.append(axis)
        return cls((perm[0], perm[1], perm[2]), tuple(flips))

    def apply(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """``array`` in the target axis order (a view)."""
        out = np.transpose(array, self.perm)
        return np.flip(out, self.flips) if self.flips else out

    def invert(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """``array`` from the target order back to the source order (a view)."""
        out = np.flip(array, self.flips) if self.flips else array
        return np.transpose(out, np.argsort(self.perm))

    def spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel spacing in the target axis order."""
        return (spacing[self.perm[0]], spacing[self.perm[1]], spacing[self.perm[2]])


@dataclass(frozen=True)
class ModelGrid:
    """Where a volume went on its way to the model, so that labels can come back."""

    reorientation: Reorientation
    oriented_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]

    def to_volume_grid(self, labels: torch.Tensor) -> npt.NDArray[np.generic]:
        """A label map on the model grid, resampled (nearest) and reoriented to the volume's."""
        if tuple(labels.shape) != self.oriented_shape:
            labels = resample_labels(labels, self.oriented_shape)
        # F order: the label writer stores F order, so DICOM-grid maps need no second copy.
        return np.asfortranarray(self.reorientation.invert(labels.numpy()))

    def probabilities_to_volume_grid(self, probabilities: torch.Tensor) -> npt.NDArray[np.float32]:
        """``(C, X, Y, Z)`` class probabilities on the model grid, resampled (trilinear)
        and reoriented to the volume's grid: ``(C, *volume.shape)``."""
        if tuple(probabilities.shape[1:]) != self.oriented_shape:
            probabilities = resample_image(probabilities, self.oriented_shape)
        moved = np.stack([self.reorientation.invert(c) for c in probabilities.numpy()])
        return moved.astype(np.float32, copy=False)


def resample_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``(C, X, Y, Z)`` float image resampled to ``shape`` (trilinear, voxel centres aligned)."""
    return F.interpolate(image[None], size=shape, mode="trilinear", align_corners=False)[0]


def resample_labels(labels: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """An integer label map resampled to ``shape`` by nearest neighbour (centres aligned)."""
    wide = labels.to(torch.uint8) if labels.dtype == torch.uint8 else labels.to(torch.float32)
    out = F.interpolate(wide[None, None], size=shape, mode="nearest-exact")[0, 0]
    return out if labels.dtype == torch.uint8 else out.round().to(labels.dtype)


def normalise(image: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Apply the card's intensity rule to a float image, in place where possible."""
    if pre.intensity == "window":
        low, high = pre.window
        return image.clamp_(low, high).sub_(low).div_(high - low)
    if pre.intensity == "zscore":
        if pre.clip_percentiles is not None:
            sample = image.flatten()[:: max(1, image.numel() // 2_000_000)].double().numpy()
            low, high = np.percentile(sample, pre.clip_percentiles)
            image = image.clamp_(float(low), float(high))
        std = float(image.std())
        return image.sub_(float(image.mean())).div_(std if std > 0 else 1.0)
    return image


def to_model_grid(volume: Volume, pre: Preprocessing) -> tuple[torch.Tensor, ModelGrid]:
    """The volume as a ``(1, X, Y, Z)`` float32 tensor on the model's grid, and the way back."""
    reorientation = Reorientation.between(volume.orientation, pre.orientation)
    oriented = reorientation.apply(volume.array)
    image = torch.from_numpy(np.ascontiguousarray(oriented, dtype=np.float32))[None]
    shape = (int(oriented.shape[0]), int(oriented.shape[1]), int(oriented.shape[2]))
    model_shape = shape
    if pre.spacing is not None:
        spacing = reorientation.spacing(volume.spacing)
        model_shape = (
            max(1, round(shape[0] * spacing[0] / pre.spacing[0])),
            max(1, round(shape[1] * spacing[1] / pre.spacing[1])),
            max(1, round(shape[2] * spacing[2] / pre.spacing[2])),
        )
        if model_shape != shape:
            image = resample_image(image, model_shape)
    return normalise(image, pre), ModelGrid(reorientation, shape, model_shape)

"""Sliding-window inference with Gaussian blending, accumulated channels-last.

The bookkeeping follows perf-limits.md §4c, where it cut the non-model share of a
512x512x300 run from 12% to under 5%:

* the logits accumulator is ``(X, Y, Z, C)``: a channels-last network output permuted to
  that layout is contiguous, so each window is blended with one in-place ``addcmul_``;
* there is no weight map: every class of a voxel shares the same sum of window weights,
  and dividing by it cannot change the argmax;
* the argmax runs over the last axis in slabs straight into uint8 (never a full int64 map).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from autolabel.inference.device import inference_context

Network = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of windows of ``patch`` along an axis of ``size`` (the last is flush).

    >>> window_starts(10, 4, 0.5)
    [0, 2, 4, 6]
    >>> window_starts(3, 4, 0.5)
    [0]
    """
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    """Window weights ``(px, py, pz, 1)``: a Gaussian of ``sigma_scale`` times the patch size
    per axis, centred on the patch, clamped to at least 1e-3 (never 0).

    Not rescaled to a peak of 1 (for an even size the centre lies between voxels): the
    clamp then bites at the same voxels as in MONAI's ``compute_importance_map``, so the
    blend is MONAI's exactly (tests/test_sliding_window_parity.py).
    """
    axes = []
    for size in patch:
        x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return weights.clamp_(min=1e-3)[..., None]


def _accumulate(
    net: Network,
    image: torch.Tensor,
    *,
    classes: int,
    patch: tuple[int, int, int] | None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch: int = 1,
    device: torch.device | None = None,
    autocast: torch.dtype | None = None,
    weight_sum: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int, int]]:
    """The weighted sum of window logits ``(X', Y', Z', classes)`` over the padded image,
    the sum of the weights ``(X', Y', Z', 1)`` when ``weight_sum``, and the unpadded shape."""
    device = device or image.device
    spatial = (int(image.shape[1]), int(image.shape[2]), int(image.shape[3]))
    window = patch or spatial
    padded = tuple(max(s, p) for s, p in zip(spatial, window, strict=True))
    if padded != spatial:
        pad = [0, padded[2] - spatial[2], 0, padded[1] - spatial[1], 0, padded[0] - spatial[0]]
        image = F.pad(image[None], pad, mode="constant", value=float(image.min()))[0]
    if blend == "gaussian" and patch is not None:
        weights = gaussian_weights(window, sigma_scale).to(device)
    else:
        weights = torch.ones((*window, 1), device=device)
    acc = torch.zeros((*padded, classes), dtype=torch.float32, device=device)
    total = torch.zeros((*padded, 1), dtype=torch.float32, device=device) if weight_sum else None
    corners = list(
        itertools.product(
            *(window_starts(s, p, overlap) for s, p in zip(padded, window, strict=True))
        )
    )
    with inference_context(device, autocast):
        for first in range(0, len(corners), batch):
            group = corners[first : first + batch]
            boxes = [
                tuple(slice(c, c + p) for c, p in zip(corner, window, strict=True))
                for corner in group
            ]
            x = torch.stack([image[(slice(None), *box)] for box in boxes]).to(device)
            out = net(x.contiguous(memory_format=torch.channels_last_3d))
            if out.shape[1] != classes:
                raise ValueError(f"network returned {out.shape[1]} channels, expected {classes}")
            logits = out.float().permute(0, 2, 3, 4, 1)  # contiguous for channels-last nets
            for index, box in enumerate(boxes):
                acc[box].addcmul_(logits[index], weights)
                if total is not None:
                    total[box] += weights
    return acc, total, spatial


def sliding_window_labels(
    net: Network,
    image: torch.Tensor,
    *,
    classes: int,
    patch: tuple[int, int, int] | None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch: int = 1,
    device: torch.device | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``net`` over ``image`` window by window and return labels on the CPU.

    ``image`` is ``(C, X, Y, Z)`` float32 (on any device); ``net`` maps
    ``(B, C, px, py, pz)`` to ``(B, classes, px, py, pz)`` logits on ``device`` (default:
    the image's). An image smaller than ``patch`` is padded with its minimum and cropped
    back; labels are uint8 (int32 beyond 256 classes). ``patch=None`` runs the whole image
    as one window. ``batch`` windows go through the network at once. Runs under ``inference_mode`` and autocast to ``autocast``.

    A CUDA out-of-memory error propagates to the caller, which may retry with a smaller
    ``batch`` or on the CPU (see :class:`autolabel.inference.runners.TorchModel`).
    """
    acc, _, spatial = _accumulate(
        net, image, classes=classes, patch=patch, overlap=overlap, blend=blend,
        sigma_scale=sigma_scale, batch=batch, device=device, autocast=autocast,
    )  # fmt: skip
    padded = tuple(acc.shape[:3])
    dtype = torch.uint8 if classes <= 256 else torch.int32
    labels = torch.empty(padded, dtype=dtype)
    for start in range(0, padded[0], 16):  # slabs keep the int64 argmax small
        labels[start : start + 16] = acc[start : start + 16].argmax(-1).to(dtype).cpu()
    return labels[: spatial[0], : spatial[1], : spatial[2]]


def sliding_window_probabilities(net: Network, image: torch.Tensor, **window: Any) -> torch.Tensor:
    """Per-class softmax of the blended logits, ``(classes, X, Y, Z)`` float32 on the CPU.

    Takes the keyword arguments of :func:`sliding_window_labels` (``classes`` and ``patch``
    required) and runs the same windows and weights (its argmax is that function's
    labels), normalised by the summed weights. It holds a float per class and voxel, so
    only callers that ask for probabilities pay for it.
    """
    acc, total, spatial = _accumulate(net, image, weight_sum=True, **window)
    if total is None:  # weight_sum=True always sums the weights
        raise RuntimeError("sliding window: no weight sum to normalise by")
    x, y, z = spatial
    acc = acc[:x, :y, :z] / total[:x, :y, :z]
    return torch.softmax(acc, dim=-1).permute(3, 0, 1, 2).contiguous().cpu()

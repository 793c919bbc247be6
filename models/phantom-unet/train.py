"""Train the ``phantom-unet`` model on synthetic CT phantoms and export it to TorchScript.

Usage (from the repository root, CPU is enough; about 25 minutes on 2 cores)::

    .venv/bin/python models/phantom-unet/train.py [--epochs N] [--out models/phantom-unet]

What it does, deterministically (fixed seeds for data, initialisation and crops):

* training data: phantoms with seeds ``TRAIN_SEEDS``, validation: ``VAL_SEEDS`` (disjoint);
  every phantom is 72 x 72 x 60 voxels at 5 mm, in the LPS index order of
  :mod:`autolabel.emulator.phantom`, which is the grid the card's preprocessing resamples to;
* input: HU windowed to [-1000, 400] and scaled to [0, 1] (the card's ``window``);
* classes: 0 background, 1 liver, 2 spleen, 3 kidney, 4 lung (phantom bone is background);
* network: a 3-level 3-D U-Net (BatchNorm, so eval-mode output does not depend on the patch),
  trained on random 64 x 64 x 48 crops with cross-entropy + soft Dice, Adam, cosine decay;
* writes ``model.pt`` (TorchScript), ``metrics.json`` (loss curve, per-organ validation
  Dice of the raw network on whole held-out phantoms) and prints the sha256 of the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autolabel.emulator.phantom import make_phantom

TRAIN_SEEDS = tuple(range(1000, 1048))
VAL_SEEDS = tuple(range(9000, 9008))
SHAPE = (72, 72, 60)  # 5 mm voxels over the default 360 x 360 x 300 mm field of view
CROP = (64, 64, 48)
CLASSES = {1: "liver", 2: "spleen", 3: "kidney", 4: "lung"}
WINDOW = (-1000.0, 400.0)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """Three levels (two poolings); spatial sizes must be multiples of 4."""

    def __init__(self, base: int = 12, classes: int = 5) -> None:
        super().__init__()
        self.enc0 = _block(1, base)
        self.enc1 = _block(base, 2 * base)
        self.bottom = _block(2 * base, 4 * base)
        self.up1 = nn.ConvTranspose3d(4 * base, 2 * base, 2, stride=2)
        self.dec1 = _block(4 * base, 2 * base)
        self.up0 = nn.ConvTranspose3d(2 * base, base, 2, stride=2)
        self.dec0 = _block(2 * base, base)
        self.head = nn.Conv3d(base, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool3d(e0, 2))
        b = self.bottom(F.max_pool3d(e1, 2))
        d1 = self.dec1(torch.cat([self.up1(b), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], dim=1))
        return self.head(d0)


def _window(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _dataset(seeds: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for seed in seeds:
        phantom = make_phantom(SHAPE, seed=seed)
        labels = phantom.labels.copy()
        labels[labels == 5] = 0  # bone is not a class of this model
        images.append(_window(phantom.hu))
        targets.append(labels.astype(np.int64))
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(targets))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + 1.0) / (probs.sum(dims) + onehot.sum(dims) + 1.0)
    return ce + (1.0 - dice[1:].mean())


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / denom


def _validate(net: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    net.eval()
    scores: dict[str, list[float]] = {name: [] for name in CLASSES.values()}
    with torch.inference_mode():
        for image, target in zip(images, targets, strict=True):
            pred = net(image[None]).argmax(1)[0].numpy()
            truth = target.numpy()
            for label, name in CLASSES.items():
                scores[name].append(_dice(pred == label, truth == label))
    net.train()
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}


def _random_crop(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = rng.choice(images.shape[0], size=batch, replace=False)
    xs, ys = [], []
    for i in idx:
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(SHAPE, CROP, strict=True)]
        sl = tuple(slice(a, a + c) for a, c in zip(start, CROP, strict=True))
        x = images[i][(slice(None), *sl)]
        # Intensity augmentation: small gain and offset, like scanner calibration drift.
        x = x * float(rng.uniform(0.95, 1.05)) + float(rng.uniform(-0.02, 0.02))
        xs.append(x)
        ys.append(targets[i][sl])
    return torch.stack(xs), torch.stack(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    train_x, train_y = _dataset(TRAIN_SEEDS)
    val_x, val_y = _dataset(VAL_SEEDS)
    net = UNet3D(base=args.base, classes=len(CLASSES) + 1)
    net = net.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=args.epochs)
    curve: list[dict[str, object]] = []
    running = 0.0
    for step in range(1, args.epochs + 1):
        x, y = _random_crop(train_x, train_y, rng, args.batch)
        loss = _loss(net(x.contiguous(memory_format=torch.channels_last_3d)), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += float(loss)
        if step % 100 == 0 or step == args.epochs:
            entry: dict[str, object] = {
                "step": step,
                "train_loss": round(running / (100 if step % 100 == 0 else step % 100), 4),
                "minutes": round((time.perf_counter() - started) / 60, 2),
            }
            running = 0.0
            if step % 500 == 0 or step == args.epochs:
                entry["val_dice"] = _validate(net, val_x, val_y)
            curve.append(entry)
            print(json.dumps(entry), flush=True)

    net.eval()
    scripted = torch.jit.script(net.to(memory_format=torch.contiguous_format))
    weights = args.out / "model.pt"
    scripted.save(str(weights))
    final = _validate(net, val_x, val_y)
    metrics = {
        "train_seeds": [TRAIN_SEEDS[0], TRAIN_SEEDS[-1]],
        "val_seeds": [VAL_SEEDS[0], VAL_SEEDS[-1]],
        "phantom_shape": list(SHAPE),
        "spacing_mm": 5.0,
        "crop": list(CROP),
        "steps": args.epochs,
        "batch": args.batch,
        "base_channels": args.base,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_minutes": round((time.perf_counter() - started) / 60, 2),
        "val_dice_raw_network": final,
        "curve": curve,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({"final_val_dice": final, "sha256": metrics["weights_sha256"]}), flush=True)


if __name__ == "__main__":
    main()

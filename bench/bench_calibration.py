"""Calibration: phantom-unet's confidence against its Dice on held-out phantoms.

Choose ``--finalize-above T`` (and ``--drop-below``) from evidence: for every organ of every
held-out phantom this runs the card's full path (resampling, sliding window, postprocessing)
with probabilities, takes autolabel's confidence (mean max-softmax probability inside the
predicted region; :mod:`autolabel.inference.confidence`) and the Dice against the phantom's
truth, then writes

* ``bench/results/calibration.png`` -- confidence (x) against Dice (y), one colour per organ
  (matplotlib if installed, else Pillow);
* ``bench/results/calibration.json`` -- every point and the tables below;
* prints two markdown tables: Dice per confidence bin, and what each threshold ``T`` would
  do to a run (the share of tasks submitted, the worst and mean Dice among them).

The phantoms are made as ``models/phantom-unet/train.py`` makes its training data
(``autolabel.emulator.phantom.make_phantom``) but with other seeds (``SEEDS``, disjoint from
``TRAIN_SEEDS`` 1000-1047, ``VAL_SEEDS`` 9000-9007 and the tests' 7001-7003), on another
grid, and at several noise levels so that the model is sometimes wrong::

    .venv/bin/python bench/bench_calibration.py [--seeds 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from autolabel.emulator.phantom import make_phantom
from autolabel.inference import load_model
from autolabel.records import Volume
from autolabel.reviews.compare import dice

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: Held-out seeds: disjoint from every seed train.py and the tests use.
SEEDS = tuple(range(31000, 31064))
#: Image noise (HU standard deviation): 12 is what the model was trained on.
NOISE_HU = (12.0, 60.0, 120.0, 180.0)
SHAPE = (112, 112, 80)  # 3.2 x 3.2 x 3.75 mm: not the training grid
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
BINS = (0.0, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1.0001)
THRESHOLDS = (0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97)
COLOURS = {"liver": "#e6194b", "spleen": "#3cb44b", "kidney": "#f58231", "lung": "#4363d8"}


def measure(seeds: int, device: str) -> list[dict[str, Any]]:
    """One point per (phantom, noise, organ): confidence, entropy, Dice."""
    model = load_model("phantom-unet", device=device)
    points = []
    for seed in SEEDS[:seeds]:
        for noise in NOISE_HU:
            phantom = make_phantom(SHAPE, seed=seed, noise_hu=noise)
            volume = Volume(
                array=phantom.hu,
                affine=LPS_TO_RAS @ phantom.affine_lps,
                modality="CT",
                source=f"phantom {seed} noise {noise:g}",
            )
            labels, confidence = model.predict_with_confidence(volume)
            assert confidence is not None, "phantom-unet gives probabilities"
            for label_id, name in model.spec.labels.items():
                found = confidence.get(label_id)
                if found is None:
                    continue  # nothing predicted: no region, no confidence
                points.append(
                    {
                        "seed": seed,
                        "noise_hu": noise,
                        "organ": name,
                        "confidence": round(found.confidence, 4),
                        "entropy": round(found.entropy or 0.0, 4),
                        "dice": round(dice(labels == label_id, phantom.labels == label_id), 4),
                    }
                )
        print(f"phantom {seed}: done", file=sys.stderr, flush=True)
    return points


def by_bin(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dice per confidence bin (organs pooled)."""
    rows = []
    for low, high in itertools.pairwise(BINS):
        inside = [p["dice"] for p in points if low <= p["confidence"] < high]
        if inside:
            rows.append(
                {
                    "confidence": f"[{low:.3g}, {min(high, 1.0):.3g}{']' if high > 1 else ')'}",
                    "n": len(inside),
                    "mean_dice": round(float(np.mean(inside)), 3),
                    "min_dice": round(float(np.min(inside)), 3),
                    "share_dice_ge_0.9": round(float(np.mean([d >= 0.9 for d in inside])), 3),
                }
            )
    return rows


def by_threshold(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``--finalize-above T`` does: a task (phantom) is submitted when every organ it
    predicted reaches T; its worst organ's Dice is what a reviewer would have to catch."""
    tasks: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for p in points:
        tasks.setdefault((p["seed"], p["noise_hu"]), []).append(p)
    rows = []
    for t in THRESHOLDS:
        kept = [ps for ps in tasks.values() if min(p["confidence"] for p in ps) >= t]
        worst = [min(p["dice"] for p in ps) for ps in kept]
        rows.append(
            {
                "T": t,
                "submitted": f"{len(kept)}/{len(tasks)}",
                "worst_dice_submitted": round(min(worst), 3) if worst else None,
                "mean_worst_dice_submitted": round(float(np.mean(worst)), 3) if worst else None,
                "mean_worst_dice_drafts": _mean(
                    [min(p["dice"] for p in ps) for ps in tasks.values() if ps not in kept]
                ),
            }
        )
    return rows


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (same keys in each)."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += [
        "| " + " | ".join("—" if r[k] is None else str(r[k]) for k in keys) + " |" for r in rows
    ]
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path) -> str:
    """The scatter plot; returns the library that drew it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        _plot_pillow(points, path)
        return "pillow"
    figure, axes = plt.subplots(figsize=(7, 5), dpi=120)
    for organ, colour in COLOURS.items():
        mine = [p for p in points if p["organ"] == organ]
        axes.scatter(
            [p["confidence"] for p in mine], [p["dice"] for p in mine], s=14, c=colour,
            label=organ, alpha=0.75,
        )  # fmt: skip
    axes.set_xlabel("confidence (mean max-softmax probability in the predicted region)")
    axes.set_ylabel("Dice against the phantom's truth")
    axes.set_title("phantom-unet on held-out phantoms (noise 12-180 HU)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return "matplotlib"


def _plot_pillow(points: list[dict[str, Any]], path: Path) -> None:
    from PIL import Image, ImageDraw

    size, margin = 640, 50
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    low_x = min(p["confidence"] for p in points)
    span = (1.0 - low_x) or 1.0
    draw.rectangle((margin, margin, size - margin, size - margin), outline="black")
    for p in points:
        x = margin + (p["confidence"] - low_x) / span * (size - 2 * margin)
        y = size - margin - p["dice"] * (size - 2 * margin)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS.get(p["organ"], "black"))
    draw.text(
        (margin, size - margin + 15),
        f"confidence {low_x:.2f} .. 1 (x), Dice 0 .. 1 (y)",
        fill="black",
    )
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="held-out phantoms (max 64)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    began = time.perf_counter()
    points = measure(min(args.seeds, len(SEEDS)), args.device)
    RESULTS.mkdir(parents=True, exist_ok=True)
    library = plot(points, RESULTS / "calibration.png")
    bins, thresholds = by_bin(points), by_threshold(points)
    correlation = float(
        np.corrcoef([p["confidence"] for p in points], [p["dice"] for p in points])[0, 1]
    )
    report = {
        "model": "phantom-unet",
        "definition": "mean max-softmax probability inside the predicted region",
        "shape": list(SHAPE),
        "noise_hu": list(NOISE_HU),
        "seeds": list(SEEDS[: args.seeds]),
        "pearson_confidence_dice": round(correlation, 3),
        "by_bin": bins,
        "by_threshold": thresholds,
        "points": points,
        "plot": library,
        "seconds": round(time.perf_counter() - began, 1),
        "machine": platform.platform(),
    }
    (RESULTS / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(points)} organ predictions; Pearson r(confidence, Dice) = {correlation:.3f}\n")
    print(markdown(bins) + "\n")
    print(markdown(thresholds))
    print(f"\nplot ({library}): {RESULTS / 'calibration.png'}")


if __name__ == "__main__":
    main()

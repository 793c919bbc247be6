"""The ``two-threshold`` model of the benchmarks: label 1 above ``body_hu``, label 2 at or
above ``bone_hu``. Two array comparisons on the volume as it comes (any dtype, any memory
order), so a benchmark of the pipeline measures the pipeline, not the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from autolabel.records import Volume


class TwoThreshold:
    """Thresholds from the card's ``[options]``."""

    def __init__(self, *, card: Any, device: str) -> None:
        options = dict(card.options)
        self.body_hu = float(options.get("body_hu", -500.0))
        self.bone_hu = float(options.get("bone_hu", 226.0))

    def predict(self, volume: Volume) -> npt.NDArray[np.uint8]:
        """Labels 0..2 on the volume's grid (same memory order as the volume)."""
        array = np.asarray(volume.array)
        labels = (array > self.body_hu).view(np.uint8)
        labels += array >= self.bone_hu
        return labels

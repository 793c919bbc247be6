"""Several warm copies of one model, one per device, on one workstation (no Ray).

``load_model(card, device="cuda:0,cuda:1")`` returns a :class:`ReplicaPool`: one loaded
model per listed device. The run's infer phase gives the pool one worker per replica;
each ``predict`` takes the replica free the longest, so work alternates between devices.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from autolabel.errors import ConfigError
from autolabel.inference.confidence import SeriesConfidence
from autolabel.inference.runners import LoadedModel
from autolabel.records import Volume

T = TypeVar("T")


def split_devices(device: str) -> list[str]:
    """``"cuda:0,cuda:1"`` as ``["cuda:0", "cuda:1"]``; one name is a list of one."""
    names = [name.strip() for name in device.split(",")]
    if not all(names):
        raise ConfigError(f"device list {device!r} has an empty entry (e.g. cuda:0,cuda:1)")
    return names


class ReplicaPool(LoadedModel):
    """Loaded replicas of one model, itself a loaded model whose ``predict`` is thread-safe.

    ``predict`` may be called from as many threads as there are replicas; each call runs on
    one replica at a time. ``calls[i]`` counts the volumes replica ``i`` predicted; each
    replica keeps its own device ``events``.
    """

    def __init__(self, replicas: list[LoadedModel]) -> None:
        if not replicas:
            raise ConfigError("a replica pool needs at least one device")
        first = replicas[0]
        super().__init__(first.card, first.spec, first.device)
        self.replicas = replicas
        self.calls = [0] * len(replicas)
        self._free: queue.Queue[int] = queue.Queue()
        for index in range(len(replicas)):
            self._free.put(index)
        self._lock = threading.Lock()

    def predict(self, volume: Volume) -> npt.NDArray[np.integer]:
        """The label map of ``volume`` from the replica free the longest."""
        return self._on_a_replica(lambda replica: replica.predict(volume))

    def predict_probabilities(
        self, volume: Volume
    ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        """:meth:`LoadedModel.predict_probabilities` on the replica free the longest."""
        return self._on_a_replica(lambda replica: replica.predict_probabilities(volume))

    @property
    def gives_confidence(self) -> bool:
        """Whether the replicas give a confidence (they are copies of one model)."""
        return self.replicas[0].gives_confidence

    def predict_with_confidence(
        self, volume: Volume
    ) -> tuple[npt.NDArray[np.integer], SeriesConfidence | None]:
        """:meth:`LoadedModel.predict_with_confidence` on the replica free the longest."""
        return self._on_a_replica(lambda replica: replica.predict_with_confidence(volume))

    def _on_a_replica(self, call: Callable[[LoadedModel], T]) -> T:
        index = self._free.get()
        try:
            with self._lock:
                self.calls[index] += 1
            return call(self.replicas[index])
        finally:
            self._free.put(index)

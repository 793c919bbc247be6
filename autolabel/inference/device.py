"""Device and precision choice for torch models, and the record of fallbacks.

``resolve_device("auto")`` is the first CUDA device when there is one, else the CPU.
``autocast_dtype`` turns a card's ``autocast`` setting into a dtype (or None for fp32):
``auto`` is fp16 on CUDA and bf16 on a CPU whose oneDNN has native bf16 (AVX512-BF16 /
AMX), where it is 2-4x faster (perf-limits.md §4); elsewhere ``auto`` is fp32.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from autolabel.errors import ConfigError


@dataclass(frozen=True)
class DeviceEvent:
    """One change of plan while running a model (kept on the model object for the ledger).

    ``kind`` is ``"oom-smaller-batch"`` (CUDA ran out of memory, windows per batch cut to
    ``batch``) or ``"oom-cpu-fallback"`` (even one window did not fit: the volume ran on the
    CPU). ``device`` is the device the work continued on.
    """

    kind: str
    device: str
    batch: int
    source: str
    message: str
    at: float

    @classmethod
    def now(cls, kind: str, device: str, batch: int, source: str, message: str) -> DeviceEvent:
        """An event stamped with the current wall-clock time."""
        return cls(kind, device, batch, source, message, time.time())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device.

    Raises :class:`ConfigError` for another name, or for CUDA when it is not available.
    """
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ConfigError(f"device {name!r} is not auto, cpu, cuda or cuda:N")
    index = int(match.group(1) or 0)
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this torch build sees no CUDA device")
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (else autocast would be emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a card setting on ``device``; None means plain fp32."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type == "cpu":
            raise ConfigError("autocast fp16 is for CUDA; use bf16 or off on the CPU")
        return torch.float16
    if setting == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    raise ConfigError(f"autocast {setting!r} is not auto, bf16, fp16 or off")


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast to ``dtype`` on ``device`` (none if None)."""
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA out-of-memory error (typed, or the older RuntimeError text)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()

"""CUDA paths of autolabel.inference: device choice, autocast, OOM fallback (needs a GPU).

Every test is marked ``gpu`` and skipped without CUDA; ``bench/gpu_check.sh`` runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autolabel.emulator.phantom import make_phantom
from autolabel.inference import load_model
from autolabel.inference.sliding_window import sliding_window_labels
from autolabel.records import Volume

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _phantom(seed: int) -> tuple[Volume, np.ndarray]:
    phantom = make_phantom((112, 112, 80), seed=seed)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.affine_lps
    return Volume(array=phantom.hu, affine=affine, modality="CT", source=f"phantom {seed}"), (
        phantom.labels
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def test_auto_device_is_cuda_and_fp16_keeps_dice() -> None:
    """device=auto picks CUDA; fp16 autocast there keeps phantom-unet's Dice >= 0.85."""
    model = load_model("phantom-unet")
    assert model.device.type == "cuda"
    volume, truth = _phantom(7001)
    labels = model.predict(volume)
    for label_id in model.spec.labels:
        assert _dice(labels == label_id, truth == label_id) >= 0.85, label_id
    assert model.events == []


def test_cuda_sliding_window_equals_cpu() -> None:
    """The same network and volume give the same labels on CUDA and CPU in fp32."""
    cpu = load_model("phantom-unet", device="cpu", autocast="off")
    gpu = load_model("phantom-unet", device="cuda:0", autocast="off")
    volume, _ = _phantom(7002)
    agreement = float((cpu.predict(volume) == gpu.predict(volume)).mean())
    assert agreement >= 0.999, agreement


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu() -> None:
    """Under a tiny memory cap, a real CUDA OOM leads to fewer windows, then the CPU, recorded."""
    model = load_model("phantom-unet", device="cuda:0")
    model.batch = 4
    volume, truth = _phantom(7003)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(8e6 / total, 0)  # about 8 MB
    try:
        labels = model.predict(volume)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    kinds = [event.kind for event in model.events]
    assert kinds[0] == "oom-smaller-batch" and kinds[-1] == "oom-cpu-fallback", kinds
    assert model.batch == 1
    assert next(model.net.parameters()).device.type == "cuda"  # back on the GPU afterwards
    assert _dice(labels == 1, truth == 1) >= 0.85


def test_windows_accumulate_on_the_gpu() -> None:
    """The pointwise bookkeeping check of the CPU suite, on CUDA with batches of 3."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 4, 1).cuda().eval()
    image = torch.randn(1, 30, 26, 19, device="cuda")
    with torch.inference_mode():
        whole = net(image[None]).argmax(1)[0].to(torch.uint8).cpu()
    windowed = sliding_window_labels(net, image, classes=4, patch=(16, 12, 8), overlap=0.5, batch=3)
    assert torch.equal(windowed, whole)


def test_deepbet_on_cuda() -> None:
    """deepbet-brain runs on CUDA when deepbet and Colin27 are present (Dice >= 0.90)."""
    pytest.importorskip("deepbet")
    colin = Path("/usr/share/mricron/templates")
    if not (colin / "ch2.nii.gz").is_file():
        pytest.skip("Colin27 not installed: apt-get install mricron-data")
    from autolabel.imaging import load_volume

    mask = load_model("deepbet-brain", device="cuda").predict(load_volume(colin / "ch2.nii.gz"))
    reference = load_volume(colin / "ch2bet.nii.gz").array > 0
    assert _dice(mask == 1, reference) >= 0.90

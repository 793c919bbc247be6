"""Benchmark: our sliding window against MONAI's ``sliding_window_inference``.

Same network weights (the phantom-unet TorchScript file, channels-last), same volume (a
phantom), same settings (patch, overlap, Gaussian blending with the same sigma, windows
per batch, autocast), all under ``inference_mode``; MONAI's logits are then reduced with
``argmax(1)`` to uint8 labels, which is what a pipeline needs. Three methods:

* ``ours``: the product's path -- on the CPU the network as ``TorchModel`` runs it
  (:func:`~autolabel.inference.runners.freeze_for_inference`: frozen, BatchNorm folded),
  through :func:`~autolabel.inference.sliding_window.sliding_window_labels`;
* ``monai``: MONAI given the card's network as a MONAI user loads it (``torch.jit.load``,
  ``eval``, channels-last) -- the headline ratio is ``monai / ours``;
* ``monai_frozen``: MONAI given our frozen network too, so ``monai_frozen / ours`` is
  what the window bookkeeping alone is worth.

One invocation runs each method ``--repeats`` times, alternating, after one warm-up each,
and reports medians, the ratios (above 1: ours is faster) and the label agreement.

    .venv/bin/python bench/bench_sliding_window.py [--device cpu|cuda] [--autocast off|bf16|fp16]

Writes ``bench/results/sliding_window_<device>_<autocast>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autolabel.emulator.phantom import make_phantom
from autolabel.inference.device import autocast_dtype, inference_context, resolve_device
from autolabel.inference.runners import freeze_for_inference
from autolabel.inference.sliding_window import sliding_window_labels

ROOT = Path(__file__).resolve().parents[1]


def _monai_labels(
    net: torch.nn.Module,
    image: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return net(x.contiguous(memory_format=torch.channels_last_3d))  # type: ignore[no-any-return]

    with inference_context(device, dtype):
        logits = sliding_window_inference(
            image[None].to(device),
            roi_size=tuple(args.patch),
            sw_batch_size=args.batch,
            predictor=predictor,
            overlap=args.overlap,
            mode="gaussian",
            sigma_scale=0.125,
            sw_device=device,
            device=device,
        )
        return logits.argmax(1)[0].to(torch.uint8).cpu()  # type: ignore[no-any-return]


def _ours(
    net: torch.nn.Module,
    image: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    return sliding_window_labels(
        net,
        image,
        classes=5,
        patch=tuple(args.patch),
        overlap=args.overlap,
        sigma_scale=0.125,
        batch=args.batch,
        device=device,
        autocast=dtype,
    )


def _timed(fn: object, device: torch.device, *fn_args: object) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    labels = fn(*fn_args)  # type: ignore[operator]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default="off", choices=("off", "bf16", "fp16", "auto"))
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 160, 120))
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--weights", type=Path, default=ROOT / "models" / "phantom-unet" / "model.pt"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = autocast_dtype(args.autocast, device)
    net = torch.jit.load(str(args.weights), map_location=device)
    net = net.eval().to(memory_format=torch.channels_last_3d)
    # What TorchModel.network(device) runs: frozen on the CPU, the network itself on CUDA.
    product_net = freeze_for_inference(net) if device.type == "cpu" else net
    phantom = make_phantom(tuple(args.shape), seed=4242)
    window = (np.clip(phantom.hu.astype(np.float32), -1000, 400) + 1000) / 1400
    image = torch.from_numpy(window)[None]

    methods = {
        "ours": (_ours, product_net),
        "monai": (_monai_labels, net),
        "monai_frozen": (_monai_labels, product_net),
    }
    if product_net is net:  # CUDA: the product runs the network as loaded
        del methods["monai_frozen"]
    times: dict[str, list[float]] = {name: [] for name in methods}
    labels: dict[str, torch.Tensor] = {}
    for fn, network in methods.values():  # warm-up: allocator, oneDNN kernels, cuDNN choice
        _timed(fn, device, network, image, args, device, dtype)
    for _ in range(args.repeats):
        for name, (fn, network) in methods.items():
            seconds, labels[name] = _timed(fn, device, network, image, args, device, dtype)
            times[name].append(round(seconds, 3))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        f"{name}_over_ours": round(medians[name] / medians["ours"], 3)
        for name in methods
        if name != "ours"
    }
    result = {
        "benchmark": "sliding_window",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "autocast": str(dtype) if dtype else "off",
        "shape": list(args.shape),
        "patch": list(args.patch),
        "overlap": args.overlap,
        "windows_per_batch": args.batch,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": medians,
        "ratio_monai_over_ours": ratios["monai_over_ours"],
        "ratios": ratios,
        "target_ratio": 1.5,
        "label_agreement": round(float((labels["ours"] == labels["monai"]).float().mean()), 6),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sliding_window_{device.type}_{args.autocast}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"{device.type} {result['autocast']}: ours {medians['ours']:.2f} s, MONAI "
        f"{medians['monai']:.2f} s, MONAI/ours {ratios['monai_over_ours']:.2f}x (target 1.5x)"
        + (
            f"; MONAI on our frozen network {medians['monai_frozen']:.2f} s, "
            f"{ratios['monai_frozen_over_ours']:.2f}x (bookkeeping alone)"
            if "monai_frozen" in medians
            else ""
        )
        + f"; labels agree on {result['label_agreement']:.4%} of voxels",
        flush=True,
    )


if __name__ == "__main__":
    main()

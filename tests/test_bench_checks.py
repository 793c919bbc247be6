"""The benches refuse options that would make them measure something else than they report.

Run as a user runs them (``python bench/...``); nothing is timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_autocast_on_a_card_that_ignores_it_is_refused_before_any_seeding(
    tmp_path: Path,
) -> None:
    """``bench_pipeline --autocast fp16`` with the default python card would run the same
    numpy code twice and report it as fp16 against fp32: it stops at once, naming the card
    and the kinds autocast applies to, before any study is seeded."""
    cache = tmp_path / "cache"
    cache.mkdir()
    done = _bench("bench_pipeline.py", "--autocast", "fp16", "--cache", str(cache))
    assert done.returncode != 0
    assert "--autocast has no effect" in done.stderr and "'python'" in done.stderr
    assert "torchscript" in done.stderr
    assert not any(cache.iterdir())


def test_autocast_keeps_a_torchscript_card() -> None:
    """The GPU check's card (phantom-unet, torchscript) is one autocast applies to."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_pipeline
    finally:
        sys.path.remove(str(ROOT / "bench"))
    bench_pipeline.check_autocast_card(str(ROOT / "models" / "phantom-unet"))


def test_a_negative_latency_is_refused() -> None:
    """``bench_phases --latency-ms -5`` would add no delay yet record -5 ms: refused."""
    done = _bench("bench_phases.py", "--latency-ms", "-5")
    assert done.returncode == 2
    assert "--latency-ms" in done.stderr and "-5" in done.stderr

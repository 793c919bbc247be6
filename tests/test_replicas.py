"""Several warm replicas of one model on one workstation: ``--device cpu,cpu``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autolabel.emulator import EmulatorHandle
from autolabel.errors import ConfigError
from autolabel.inference import load_model
from autolabel.inference.replicas import ReplicaPool
from autolabel.pipeline import RunOptions, RunSummary, run
from autolabel.redbrick import get_project


def _dry_run(emulator: EmulatorHandle, model: object, work: Path) -> RunSummary:
    with get_project(
        emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
    ) as project:
        return run(project, model, RunOptions(work_dir=work, mode="dry-run"))  # type: ignore[arg-type]


def _labels(summary: RunSummary) -> dict[str, np.ndarray]:
    return {o.task_id: np.asarray(nib.load(o.files["labels-0"]).dataobj) for o in summary.outcomes}


def test_two_cpu_replicas_give_the_same_labels_and_both_work(
    emulator_factory: object, tmp_path: Path
) -> None:
    """``device="cpu,cpu"``: one warm model per device, both predict, labels unchanged."""
    emulator = emulator_factory(studies=6)  # type: ignore[operator]
    single = _dry_run(emulator, load_model("phantom-unet", device="cpu"), tmp_path / "one")
    pool = load_model("phantom-unet", device="cpu,cpu")
    assert isinstance(pool, ReplicaPool) and len(pool.replicas) == 2
    assert pool.replicas[0].net is not pool.replicas[1].net  # type: ignore[attr-defined]
    double = _dry_run(emulator, pool, tmp_path / "two")
    assert single.exit_code == double.exit_code == 0
    assert [o.status for o in double.outcomes] == ["dry_run"] * 6
    one, two = _labels(single), _labels(double)
    assert one.keys() == two.keys()
    for task_id in one:
        assert np.array_equal(one[task_id], two[task_id]), task_id
    assert sum(pool.calls) == 6 and min(pool.calls) >= 1, pool.calls


def test_a_device_list_with_a_gap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="empty entry"):
        load_model("ct-threshold", device="cpu,,cpu")

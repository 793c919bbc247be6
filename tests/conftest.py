"""Shared fixtures: a seeded local RedBrick emulator served over real HTTP.

* ``emulator`` -- a fresh emulator per test (3 phantom CT studies of 32x32x16 voxels, all
  in ``Label`` and assigned to the API key), served on a free ``localhost`` port; yields an
  :class:`autolabel.emulator.EmulatorHandle` (``url``, ``org_id``, ``project_id``,
  ``api_key``, fault control, task state, events, helpers to act as other users).
* ``emulator_factory`` -- ``emulator_factory(studies=..., shape=..., from_paths=...,
  faults=..., multi_series=..., datasets=...)`` for a custom one (served until the test
  ends); ``datasets`` seeds a Datasets (AltaDB) project.
* ``emulator_template`` -- the session's seeded data folder (read-only; copied per test).

Seeding writes real DICOM files, so it happens once per session per configuration; each
test gets its own copy of the folder, hence its own state.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from autolabel.emulator import EmulatorHandle, FaultRule, seed, serve_in_thread

#: The default fixture's studies: small phantoms keep every test fast on two cores.
DEFAULT_STUDIES = 3
DEFAULT_SHAPE = (32, 32, 16)

EmulatorFactory = Callable[..., EmulatorHandle]


@pytest.fixture(scope="session", autouse=True)
def _the_checkout_stays_clean() -> Iterator[None]:
    """No test writes into the checkout (an export without a destination writes to the
    current folder, as the SDK's does): the session fails if the repository root gained
    an entry."""
    root = Path(__file__).resolve().parents[1]
    before = {p.name for p in root.iterdir()}
    yield
    added = sorted({p.name for p in root.iterdir()} - before - {".pytest_cache"})
    assert not added, f"tests wrote into the checkout: {added}"


@pytest.fixture(scope="session")
def _emulator_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Path]:
    return {}


def _template(
    cache: dict[Any, Path],
    factory: pytest.TempPathFactory,
    studies: int,
    shape: tuple[int, int, int],
    from_paths: tuple[str, ...],
    multi_series: bool = False,
    datasets: bool = False,
) -> Path:
    key = (studies, shape, from_paths, multi_series, datasets)
    if key not in cache:
        folder = factory.mktemp("emulator-template")
        seed(
            folder, studies=studies, shape=shape, from_paths=from_paths,
            multi_series=multi_series, datasets=datasets,
        )  # fmt: skip
        cache[key] = folder
    return cache[key]


@pytest.fixture(scope="session")
def emulator_template(
    _emulator_templates: dict[Any, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The seeded data folder the ``emulator`` fixture copies (do not modify it)."""
    return _template(_emulator_templates, tmp_path_factory, DEFAULT_STUDIES, DEFAULT_SHAPE, ())


@pytest.fixture
def emulator_factory(
    _emulator_templates: dict[Any, Path],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> Iterator[EmulatorFactory]:
    """Start emulators with custom seeding; each is served until the test ends."""
    with ExitStack() as stack:
        count = 0

        def start(
            *,
            studies: int = DEFAULT_STUDIES,
            shape: tuple[int, int, int] = DEFAULT_SHAPE,
            from_paths: tuple[str | Path, ...] = (),
            faults: tuple[FaultRule, ...] = (),
            multi_series: bool = False,
            datasets: bool = False,
        ) -> EmulatorHandle:
            nonlocal count
            count += 1
            paths = tuple(str(p) for p in from_paths)
            template = _template(
                _emulator_templates,
                tmp_path_factory,
                studies,
                shape,
                paths,
                multi_series,
                datasets,
            )
            data_dir = tmp_path / f"emulator-{count}"
            shutil.copytree(template, data_dir)
            return stack.enter_context(serve_in_thread(data_dir, faults=faults))

        yield start


@pytest.fixture
def emulator(emulator_factory: EmulatorFactory) -> EmulatorHandle:
    """A fresh seeded emulator served on ``http://localhost:<free port>``."""
    return emulator_factory()


def add_series_task(
    emulator: EmulatorHandle, name: str, series: list[tuple[str, list[str]]]
) -> str:
    """Add a task of several series (``[(series name, item keys)]``, in task order), assigned
    to the key in Label; returns its id."""
    from autolabel.emulator.datapoints import new_task

    project = emulator.emulator.store.project(emulator.project_id)
    assert project is not None
    items: list[str] = []
    info = []
    for series_name, keys in series:
        indices = list(range(len(items), len(items) + len(keys)))
        items += keys
        info.append(
            {"name": series_name, "itemsIndices": indices, "dataType": "DICOM3D", "metaData": {}}
        )
    task = new_task(
        emulator.emulator.store, project, name=name, items=items, series_info=info,
        created_by=emulator.key_user_id, pre_assign={"Label": emulator.key_user_id},
    )  # fmt: skip
    return task.task_id


def sdk_export(emulator: EmulatorHandle, task_id: str, destination: Path) -> dict[str, Any]:
    """One task as the official SDK's ``export_tasks`` gives it (label files under
    ``destination``): how a user sees where the labels landed."""
    import warnings

    import redbrick

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK's "API keys will be sunset" notice
        sdk = redbrick.get_project(
            emulator.org_id, emulator.project_id, emulator.api_key, url=emulator.url
        )
    (task,) = list(sdk.export.export_tasks(task_id=task_id, destination=str(destination)))
    return dict(task)


def blank_ct_items(
    emulator: EmulatorHandle, folder: Path, shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> list[str]:
    """Store a CT series of air (-1000 HU: no model finds anything) and return its item keys."""
    import numpy as np

    from autolabel.imaging import write_dicom_series

    files = write_dicom_series(
        np.full(shape, -1000, dtype=np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), folder
    )
    prefix = f"{emulator.org_id}/{emulator.project_id}/items/{folder.name}"
    for path in files:
        emulator.emulator.blobs.write(
            f"{prefix}/{path.name}", path.read_bytes(), content_type=None, encoding=None
        )
    return [f"{prefix}/{path.name}" for path in files]


@pytest.fixture(scope="session")
def nnunet_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``nnUNet_results`` folder: Dataset901_Tiny (liver, spleen), folds 0 and 1, built by
    nnU-Net's own planner and trainer class (tests/framework_models.py); skips without nnunetv2."""
    pytest.importorskip("nnunetv2")
    from framework_models import build_nnunet_results

    return build_nnunet_results(tmp_path_factory.mktemp("nnunet"))

"""Seed an emulator data directory with a demo org, project, users and studies.

:func:`seed` creates (once) an org, a project ``Label -> Review_1 -> Ground Truth`` of type
``DICOM_SEGMENTATION`` with a CT taxonomy V2, an owner, an API-key user and a human
labeler; then adds one task per study: synthetic CT phantoms written as real DICOM series
(:func:`autolabel.emulator.phantom.make_phantom`, :func:`autolabel.imaging.write_dicom_series`),
and/or the DICOM folders and NIfTI files of ``from_paths`` (with ``multi_series``, each
folder is one task whose sub-folders and files are its series). Every task waits in
``Label``, assigned to the API key.

Seeding is idempotent: a second call on the same directory reuses the org, project and key
recorded in ``connection.json`` and skips phantoms whose task name already exists and
studies whose source path is already seeded, so it only adds what is new. Studies that
share a name get unique task names (``CT``, ``CT-2``...).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autolabel.emulator import altadb
from autolabel.emulator.datapoints import new_task
from autolabel.emulator.entities import ProjectRecord, UserRecord, utc_now
from autolabel.emulator.service import Emulator, new_api_key

CONNECTION_FILE = "connection.json"
HUMAN_EMAIL = "labeler@example.com"
OWNER_EMAIL = "owner@example.com"
KEY_NAME = "autolabel"

#: The CT taxonomy (V2) of the seeded project: segmentation categories plus a landmark.
CT_OBJECT_TYPES: tuple[tuple[str, int, str, str], ...] = (
    ("Body", 0, "SEGMENTATION", "#F5D0A9"),
    ("Lung", 1, "SEGMENTATION", "#4363D8"),
    ("Bone", 2, "SEGMENTATION", "#FFFFFF"),
    ("Liver", 3, "SEGMENTATION", "#E6194B"),
    ("Spleen", 4, "SEGMENTATION", "#3CB44B"),
    ("Kidney", 5, "SEGMENTATION", "#F58231"),
    ("Nodule", 6, "LANDMARK", "#FFE119"),
)


@dataclass(frozen=True)
class Connection:
    """How to reach a seeded emulator: what ``connection.json`` holds.

    ``url`` is None until the emulator is served (``serve`` writes the real one), and so is
    ``admin_token``, the secret of the admin routes (a new one each time it is served).
    """

    url: str | None
    org_id: str
    project_id: str
    api_key: str
    admin_token: str | None = None

    def save(self, data_dir: str | Path) -> Path:
        """Write ``DIR/connection.json`` (the key is the emulator's own demo key)."""
        path = Path(data_dir) / CONNECTION_FILE
        # Owner-only: it holds the demo key and the admin token.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, data_dir: str | Path) -> Connection:
        """Read ``DIR/connection.json``; ``FileNotFoundError`` for an unseeded directory."""
        path = Path(data_dir) / CONNECTION_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: seed the directory first (autolabel emulator seed --data"
                f" {data_dir})"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            url=data.get("url"),
            org_id=data["org_id"],
            project_id=data["project_id"],
            api_key=data["api_key"],
            admin_token=data.get("admin_token"),
        )


def ct_taxonomy() -> dict[str, Any]:
    """The seeded project's taxonomy in the shape ``getProjectSDK`` returns."""
    return {
        "name": "CT Trunk",
        "taxId": str(uuid.uuid5(uuid.NAMESPACE_URL, "autolabel-emulator/ct-trunk")),
        "isNew": True,
        "version": 1,
        "archived": False,
        "studyClassify": [],
        "seriesClassify": [],
        "instanceClassify": [],
        "objectTypes": [
            {
                "category": name,
                "classId": class_id,
                "labelType": label_type,
                "color": color,
                # A free-text attribute where pre-labelling tools stamp their model
                # (autolabel writes "<name> <version>" into it), and a number for the
                # model's confidence in the label (NUMBER: redbrick/types/taxonomy.py).
                "attributes": [
                    {"name": "Model", "attrType": "TEXT", "attrId": 0},
                    {
                        "name": "Confidence",
                        "attrType": "NUMBER",
                        "attrId": 1,
                        "minValue": 0,
                        "maxValue": 1,
                    },
                ],
                "archived": False,
                "parents": [],
                "hint": None,
            }
            for name, class_id, label_type, color in CT_OBJECT_TYPES
        ],
    }


def default_stages() -> list[dict[str, Any]]:
    """Input -> Label -> Review_1 (reject: back to Label) -> Output (Ground Truth)."""
    return [
        {"stageName": "Input", "brickName": "labelset-input", "stageConfig": {},
         "routing": {"nextStageName": "Label"}},
        {"stageName": "Label", "brickName": "manual-labeling",
         "stageConfig": {"autoAssign": False}, "routing": {"nextStageName": "Review_1"}},
        {"stageName": "Review_1", "brickName": "expert-review",
         "stageConfig": {"autoAssign": False, "reviewPercent": 1.0},
         "routing": {"passed": "Output", "failed": "Failed_Review_1"}},
        {"stageName": "Failed_Review_1", "brickName": "feedback", "stageConfig": {},
         "routing": {"feedbackStageName": "Label"}},
        {"stageName": "Output", "brickName": "labelset-output", "stageConfig": {},
         "routing": {"nextStageName": "END"}},
    ]  # fmt: skip


def _create_workspace(emulator: Emulator, data_dir: Path) -> Connection:
    store = emulator.store
    if store.org_ids():
        raise FileExistsError(
            f"{data_dir} holds an emulator database but no {CONNECTION_FILE}; seed a new"
            " directory instead"
        )
    org_id, project_id = str(uuid.uuid4()), str(uuid.uuid4())
    store.add_org(org_id, "Autolabel Demo")
    store.add_user(UserRecord(str(uuid.uuid4()), org_id, OWNER_EMAIL, "Olive", "Owner", "OWNER"))
    api_key = new_api_key()
    key_user = UserRecord(f"API:{uuid.uuid4()}", org_id, "", KEY_NAME, "", "ADMIN")
    store.add_user(key_user, api_key=api_key)
    store.add_user(UserRecord(str(uuid.uuid4()), org_id, HUMAN_EMAIL, "Lee", "Labeler", "MEMBER"))
    now = utc_now()
    store.add_project(
        ProjectRecord(
            project_id, org_id, "CT pre-labeling", "DICOM_SEGMENTATION", ct_taxonomy(),
            default_stages(), now, now,
        )
    )  # fmt: skip
    connection = Connection(url=None, org_id=org_id, project_id=project_id, api_key=api_key)
    connection.save(data_dir)
    return connection


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


@dataclass(frozen=True)
class Study:
    """One task to seed: its name, its series (``(series name, files)``, in order) and
    the absolute path it came from (recorded as the task's ``metaData.source``)."""

    name: str
    series: tuple[tuple[str, tuple[Path, ...]], ...]
    source: Path


def _series_of(path: Path) -> tuple[str, tuple[Path, ...]] | None:
    """A NIfTI file, or a folder directly holding DICOM files, as one series."""
    if path.is_file():
        return (path.name.split(".")[0], (path,)) if _is_nifti(path) else None
    dicoms = tuple(sorted(p for p in path.iterdir() if p.is_file() and _is_dicom(p)))
    return (path.name, dicoms) if dicoms else None


def find_studies(paths: Iterable[str | Path], *, multi_series: bool = False) -> list[Study]:
    """The studies below ``paths``.

    By default each NIfTI file and each folder directly holding DICOM files is a
    one-series study. With ``multi_series`` each given folder is ONE study whose series are
    its NIfTI files and its sub-folders holding DICOM files, in name order (a given file is
    still a study of its own; a sub-folder holding no DICOM file directly is an error, other
    files are ignored). Raises :class:`FileNotFoundError` for a path that does not
    exist or holds nothing to seed: input is never dropped silently.
    """
    studies: list[Study] = []
    for named in map(Path, paths):
        # The source is kept absolute: it tells a seeded study from a new one, and the same
        # relative path from two folders names two different files.
        given = Path(os.path.abspath(named))
        found: list[Study] = []
        if given.is_file():
            series = _series_of(given)
            if series is not None:
                found.append(Study(series[0], (series,), given))
        elif not given.is_dir():
            raise FileNotFoundError(f"{named} is neither a NIfTI file nor a folder")
        elif multi_series:
            children = sorted(given.iterdir())
            hollow = [c.name for c in children if c.is_dir() and _series_of(c) is None]
            if hollow:  # a series the user meant to give would vanish from the task
                raise FileNotFoundError(
                    f"{named}: sub-folder(s) {', '.join(hollow)} hold no DICOM files directly "
                    "(empty, or the files sit one folder deeper); with --multi-series each "
                    "sub-folder is one series: move its DICOM files up, or remove it"
                )
            kept = tuple(part for part in map(_series_of, children) if part is not None)
            if kept:
                found.append(Study(given.name, kept, given))
        else:
            for folder in sorted([given, *(p for p in given.rglob("*") if p.is_dir())]):
                series = _series_of(folder)
                if series is not None:
                    found.append(Study(folder.name, (series,), folder))
                for file in sorted(p for p in folder.iterdir() if p.is_file() and _is_nifti(p)):
                    found.append(
                        Study(file.name.split(".")[0], ((file.name.split(".")[0], (file,)),), file)
                    )
        if not found:
            what = "series folders or NIfTI files" if multi_series else "DICOM files or NIfTI files"
            raise FileNotFoundError(
                f"{named}: found no {what} to seed; point --from at DICOM folders or NIfTI files"
            )
        studies += found
    return studies


def _task_name(emulator: Emulator, project: ProjectRecord, study: Study) -> str | None:
    """A task name for ``study`` that no other study has: its own name, or ``name-2``,
    ``name-3``... when another source already took it; None when this source is seeded."""
    for n in range(1, 10_000):
        name = study.name if n == 1 else f"{study.name}-{n}"
        task = emulator.store.task_by_name(project.project_id, name)
        if task is None:
            return name
        meta = json.loads(task.meta_data or "{}")
        if isinstance(meta, dict) and meta.get("source") == str(study.source):
            return None
    raise FileExistsError(f"too many studies named {study.name!r}")


def _add_study(
    emulator: Emulator,
    project: ProjectRecord,
    key_user_id: str,
    name: str,
    series: Sequence[tuple[str, Sequence[Path]]],
    meta: dict[str, str],
    *,
    datasets: bool = False,
) -> bool:
    if emulator.store.task_by_name(project.project_id, name) is not None:
        return False
    prefix = f"{project.org_id}/{project.project_id}/items/{uuid.uuid4()}"
    items: list[str] = []
    series_info = []
    for number, (series_name, files) in enumerate(series):
        first = len(items)
        dicom = len(files) > 1 or _is_dicom(files[0])
        if datasets and dicom:
            # follows redbrick/export/public.py: a Datasets series is one altadb: item
            alta = f"{project.org_id}/{project.project_id}/altadb/{uuid.uuid4()}"
            items.append(altadb.store_series(emulator.blobs, alta, files))
        for path in files if not (datasets and dicom) else ():
            key = f"{prefix}/{path.name}" if len(series) == 1 else f"{prefix}/{number}/{path.name}"
            emulator.blobs.write(key, path.read_bytes(), content_type=None, encoding=None)
            items.append(key)
        default = "CT" if dicom else "image"
        series_info.append(
            {
                "name": meta.get("series", default) if len(series) == 1 else series_name,
                "itemsIndices": list(range(first, len(items))),
                "dataType": "DICOM3D" if dicom else "NIFTI",
                "metaData": {"source": meta.get("source", "file")},
            }
        )
    new_task(
        emulator.store, project, name=name, items=items, series_info=series_info,
        created_by=key_user_id, meta_data=json.dumps(meta), pre_assign={"Label": key_user_id},
    )  # fmt: skip
    return True


def seed(
    data_dir: str | Path,
    *,
    studies: int = 3,
    shape: tuple[int, int, int] = (64, 64, 32),
    from_paths: Iterable[str | Path] = (),
    multi_series: bool = False,
    seed: int = 0,
    datasets: bool = False,
) -> Connection:
    """Seed ``data_dir`` (see the module docstring) and return its :class:`Connection`.

    ``datasets=True`` stores DICOM studies as a Datasets (AltaDB) project does: one
    ``altadb:`` item per series (:mod:`autolabel.emulator.altadb`).

    Phantom study ``n`` (``0 <= n < studies``) is named ``phantom-<seed + n>`` and made by
    ``make_phantom(shape, seed=seed + n)``; its task ``metaData`` records ``seed`` and
    ``shape`` so tests can rebuild the ground truth.

    ``from_paths`` are read by :func:`find_studies` (``multi_series`` included). A study
    whose name another source already took gets ``<name>-2``, ``<name>-3``...; a study from a
    source already seeded is skipped. A path with nothing to seed raises
    :class:`FileNotFoundError` before anything is created.
    """
    from autolabel.emulator.phantom import make_phantom
    from autolabel.imaging import write_dicom_series

    found = find_studies(from_paths, multi_series=multi_series)  # bad input seeds nothing
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    emulator = Emulator(data_dir)
    try:
        if (data_dir / CONNECTION_FILE).is_file():
            connection = Connection.load(data_dir)
        else:
            connection = _create_workspace(emulator, data_dir)
        project = emulator.store.project(connection.project_id)
        key_user = emulator.caller_for_key(connection.api_key)
        if project is None or key_user is None:
            raise FileExistsError(f"{data_dir}: connection.json does not match the database")
        for offset in range(studies):
            number = seed + offset
            name = f"phantom-{number:03d}"
            if emulator.store.task_by_name(project.project_id, name) is not None:
                continue
            phantom = make_phantom(shape, seed=number)
            with tempfile.TemporaryDirectory() as tmp:
                files = write_dicom_series(
                    phantom.hu, phantom.affine_lps, tmp, patient_id=name,
                    series_description=f"Synthetic trunk CT {name}",
                )  # fmt: skip
                meta = {
                    "source": "phantom",
                    "seed": str(number),
                    "shape": "x".join(map(str, shape)),
                }
                _add_study(
                    emulator, project, key_user.user_id, name, [("CT", files)], meta,
                    datasets=datasets,
                )  # fmt: skip
        for study in found:
            task_name = _task_name(emulator, project, study)
            if task_name is not None:
                meta = {"source": str(study.source)}
                _add_study(
                    emulator, project, key_user.user_id, task_name, study.series, meta,
                    datasets=datasets,
                )  # fmt: skip
    finally:
        emulator.close()
    return connection

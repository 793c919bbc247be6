"""The package metadata builds cleanly with the build backend pyproject.toml asks for."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_declares_an_spdx_license_without_deprecation_warnings(tmp_path: Path) -> None:
    """``license`` is the SPDX string of PEP 639 (setuptools >= 77, which the build-system
    table requires), not the deprecated table: no warning, ``License-Expression`` set."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    assert project["build-system"]["requires"] == ["setuptools>=77"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "autolabel").mkdir()
    shutil.copy(ROOT / "autolabel" / "__init__.py", tmp_path / "autolabel" / "__init__.py")
    build = (
        "import setuptools.build_meta as backend, pathlib; pathlib.Path('meta').mkdir(); "
        "print(backend.prepare_metadata_for_build_wheel('meta'))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", build],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in (done.stdout + done.stderr).lower(), done.stderr
    metadata = (tmp_path / "meta" / done.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()

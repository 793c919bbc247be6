"""``notebooks/quickstart.ipynb`` runs from top to bottom on a fresh kernel of this
interpreter (nbclient), so it never rots: the emulator, the dry run, the preview image,
drafts, the emulator's state, the ledger's skip and the report all work as it shows."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "autolabel-tests"


def kernel_spec(folder: Path) -> str:
    """A kernel spec that starts ``ipykernel`` with this very interpreter (the venv's),
    whatever kernels the machine has; returns its name (``JUPYTER_PATH`` must hold
    ``folder``)."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "autolabel tests",
                "language": "python",
            }
        )
    )
    return KERNEL


def test_committed_notebook_has_no_outputs() -> None:
    """The notebook is committed stripped: no outputs, no execution counts."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_notebook_runs_and_shows_its_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell runs without error; the preview is a real PNG; the printed summaries
    show three dry runs, three drafts saved, drafts in Label, and the report written."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for name in ("REDBRICK_URL", "REDBRICK_ORG_ID", "REDBRICK_PROJECT_ID", "REDBRICK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    name = kernel_spec(tmp_path / "jupyter")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=name,
        timeout=180,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text.count("dry_run") == 3
    assert text.count("draft_saved") == 3
    assert text.count("stage=Label  draft=True") == 3
    assert "already done: 3" in text
    assert "open in a browser:" in text and "report.html" in text
    pngs = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    preview = Image.open(io.BytesIO(base64.b64decode(pngs[0])))
    assert preview.format == "PNG" and preview.width > 300

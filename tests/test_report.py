"""The HTML report: built from a real ledger of runs against the emulator, checked as a user
would see it -- every outcome with its reason, embedded images that decode, nothing
external, escaped text -- and rendered by headless Chromium into a non-blank screenshot."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from autolabel.cli import main
from autolabel.inference import load_model
from autolabel.pipeline import RunOptions, run
from autolabel.redbrick import get_project
from autolabel.report import ReviewRow, build_report, write_report

#: Flags that keep headless Chromium off the network and out of the user's profile.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """The headless browser of the tests (Debian package ``chromium``), if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


#: A well-formed task id that the project does not have.
MISSING_TASK = "00000000-0000-4000-8000-000000000000"

needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


class _Page(HTMLParser):
    """The tags of a page that matter here: images, scripts, links and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.scripts = 0
        self.references: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(values)
        if tag == "script":
            self.scripts += 1
        for key in ("href", "src"):
            if key in values and not values[key].startswith("data:"):
                self.references.append(values[key])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Page:
    """Parse a report page."""
    page = _Page()
    page.feed(html)
    return page


def decode_images(page: _Page) -> list[Image.Image]:
    """Every embedded image of the page, decoded by Pillow (raises on a broken one)."""
    images = []
    for img in page.images:
        head, _, data = img["src"].partition(",")
        assert head == "data:image/png;base64", head[:40]
        picture = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        picture.load()
        images.append(picture)
    return images


def screenshot(html_path: Path, out: Path, tmp: Path, size: str = "1200,1600") -> Image.Image:
    """Render ``html_path`` in headless Chromium and return the screenshot."""
    binary = chromium()
    assert binary is not None
    profile = tmp / "chromium-profile"
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={size}",
        f"--screenshot={out}",
        html_path.resolve().as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp)}
    subprocess.run(command, check=True, capture_output=True, timeout=120, env=env)
    picture = Image.open(out)
    picture.load()
    return picture


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A work folder with four runs covering every outcome: submitted, dry run, draft
    saved, skipped (unknown task) and failed (RedBrick refuses the write)."""
    from autolabel.emulator import seed, serve_in_thread

    root = tmp_path_factory.mktemp("report")
    seed(root / "emulator", studies=3, shape=(48, 48, 24))
    work_dir = root / "work"
    model = load_model("ct-threshold")
    with serve_in_thread(root / "emulator") as emu:
        project = get_project(emu.org_id, emu.project_id, emu.api_key, url=emu.url)
        names = {t.task_id: t.name for t in emu.tasks()}
        first, second, third = list(names)

        def go(**options: Any) -> Any:
            return run(project, model, RunOptions(work_dir=work_dir, **options))

        runs = {
            "final": go(mode="final", task_ids=(first,)),
            "dry": go(mode="dry-run", task_ids=(second, third)),
            "draft": go(mode="draft", task_ids=(second, MISSING_TASK)),
        }
        emu.add_fault(
            "putManualLabelingTaskAndLabels", "graphql_error", message="<b>refused</b>", times=None
        )
        runs["failing"] = go(mode="draft", task_ids=(third,))
        emu.clear_faults()
        project.close()
    return {"dir": work_dir, "runs": runs, "names": names}


def test_report_of_every_run_shows_each_outcome_with_its_reason(work: dict[str, Any]) -> None:
    """All runs: one card per task with its outcome; skips and failures say why; the
    error text from RedBrick is escaped, not interpreted as HTML."""
    html = build_report(work["dir"], runs=0)
    page = parse(html)
    text = " ".join(page.text)
    for label in ("submitted", "dry run · kept locally", "draft saved", "skipped", "failed"):
        assert label in text, label
    assert "no such task in this project" in text
    failing = work["runs"]["failing"]
    assert [o.status for o in failing.outcomes] == ["failed"]
    assert "&lt;b&gt;refused&lt;/b&gt;" in html and "<b>refused</b>" not in html
    for name in work["names"].values():
        assert name in text
    assert "ct-threshold" in text and "1.0.0" in text


def test_report_embeds_every_preview_and_references_nothing_outside(
    work: dict[str, Any],
) -> None:
    """Previews of the written tasks are embedded PNGs that decode to the files on disk;
    there is no script and no external reference, so the file works offline."""
    page = parse(build_report(work["dir"], runs=0))
    images = decode_images(page)
    outcomes = [o for r in work["runs"].values() for o in r.outcomes]
    previews = [Path(o.files["preview-0"]) for o in outcomes if "preview-0" in o.files]
    # 1 submitted, 2 dry run, 1 draft, and the refused write (converted before it failed)
    assert len(images) == len(previews) == 5
    on_disk = {p.read_bytes() for p in previews}
    embedded = {base64.b64decode(img["src"].partition(",")[2]) for img in page.images}
    assert embedded == on_disk
    for picture in images:
        assert picture.format == "PNG" and picture.width > 300
        assert np.asarray(picture.convert("L")).std() > 10  # an image, not a blank
    assert page.scripts == 0
    assert page.references == []


def test_report_of_one_run_shows_its_volumes_and_stage_timings(work: dict[str, Any]) -> None:
    """``run_id`` picks one run: its tasks' volumes (ml, as the pipeline measured them) and
    the seconds of each stage are in the report, other runs' tasks are not."""
    final = work["runs"]["final"]
    outcome = final.outcomes[0]
    html = build_report(work["dir"], final.run_id)
    text = " ".join(parse(html).text)
    assert final.run_id in text and "Submissions" in text
    for category, ml in outcome.volumes_ml.items():
        assert category in text and f"{ml:,.1f}" in text
    for stage in ("fetch", "infer", "convert", "write"):
        assert stage in text
    assert "draft saved" not in text and "no such task" not in text
    with pytest.raises(ValueError, match="no run"):
        build_report(work["dir"], "20000101T000000Z-00000000")


def test_report_lists_review_decisions_with_dice() -> None:
    """Review rows show the decision, the Dice of each category and the reason."""
    rows = [
        ReviewRow("t1", "phantom-000", "accepted", {"Lung": 1.0}),
        ReviewRow("t2", "phantom-<1>", "rejected", {"Lung": 0.64}, "Dice below 0.80 for Lung"),
    ]
    from autolabel.report import _review_section

    html = _review_section(rows)
    text = " ".join(parse(html).text)
    assert "accepted" in text and "rejected" in text and "0.640" in text
    assert "phantom-&lt;1&gt;" in html and "Dice below 0.80 for Lung" in text


def test_cli_report_writes_the_file_atomically_and_refuses_a_folder_without_ledger(
    work: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``autolabel report`` writes the HTML (readable by others, no temporary left behind)
    and prints where; without a ledger it is a usage error (exit 2)."""
    out = tmp_path / "out" / "report.html"
    assert main(["report", "--work", str(work["dir"]), "--runs", "0", "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert out.stat().st_mode & 0o444 == 0o444
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    assert "<!DOCTYPE html>" in out.read_text(encoding="utf-8")
    default = write_report(work["dir"])
    assert default == work["dir"] / "report.html" and default.is_file()
    assert main(["report", "--work", str(tmp_path / "empty")]) == 2
    assert "no ledger" in capsys.readouterr().err
    assert main(["report", "--work", str(work["dir"]), "--run", "20000101T000000Z-0"]) == 2
    assert "no run '20000101T000000Z-0'" in capsys.readouterr().err


@needs_chromium
def test_report_renders_in_headless_chromium(work: dict[str, Any], tmp_path: Path) -> None:
    """Chromium opens the report and draws it: the screenshot is not blank, holds the
    page background and the previews' dark pixels."""
    path = write_report(work["dir"], tmp_path / "report.html", runs=0)
    shot = screenshot(path, tmp_path / "shot.png", tmp_path)
    assert shot.size == (1200, 1600)
    pixels = np.asarray(shot.convert("RGB")).reshape(-1, 3)
    assert pixels.std() > 20
    background = np.all(pixels == (244, 246, 249), axis=1).mean()
    dark = (pixels.sum(axis=1) < 60).mean()
    assert background > 0.2, background  # the page's own colour: the CSS applied
    assert dark > 0.02, dark  # an embedded preview was drawn

"""Overlay previews: orientation, aspect, label colours, windows, empty label maps, PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from autolabel.emulator.phantom import PHANTOM_LABELS, make_phantom
from autolabel.report.overlay import (
    SOFT_TISSUE_WINDOW,
    auto_window,
    label_color,
    render_overlay,
    render_planes,
    save_overlay,
)

RIGHT, ANTERIOR, SUPERIOR = 1, 2, 3


def _marked_volume() -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """A RAS volume with a block on the patient's right, one anterior and one superior."""
    image = np.full((30, 30, 30), 40, dtype=np.int16)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[24:28, 8:22, 8:22] = RIGHT
    labels[8:22, 24:28, 8:22] = ANTERIOR
    labels[8:22, 8:22, 24:28] = SUPERIOR
    return image, labels


def _centroid(panel: Image.Image, colour: tuple[int, int, int]) -> tuple[float, float]:
    """Centroid (x, y) of the pixels of ``colour``, as fractions of the panel size."""
    pixels = np.asarray(panel)
    rows, cols = np.nonzero(np.all(pixels == colour, axis=2))
    assert rows.size, f"no pixel of colour {colour}"
    return float(cols.mean()) / panel.width, float(rows.mean()) / panel.height


def test_panels_are_in_radiological_orientation() -> None:
    """Patient's right is on the image's left; anterior up (axial), left (sagittal); superior up."""
    image, labels = _marked_volume()
    panels = render_planes(image, labels, (1.0, 1.0, 1.0), alpha=1.0)
    x, _ = _centroid(panels["axial"], label_color(RIGHT))
    assert x < 0.3
    _, y = _centroid(panels["axial"], label_color(ANTERIOR))
    assert y < 0.3
    x, _ = _centroid(panels["coronal"], label_color(RIGHT))
    assert x < 0.3
    _, y = _centroid(panels["coronal"], label_color(SUPERIOR))
    assert y < 0.3
    x, _ = _centroid(panels["sagittal"], label_color(ANTERIOR))
    assert x < 0.3
    _, y = _centroid(panels["sagittal"], label_color(SUPERIOR))
    assert y < 0.3


def test_lps_arrays_render_like_their_ras_equivalent() -> None:
    """orientation='LPS' (plain DICOM axial) flips i and j before display."""
    image, labels = _marked_volume()
    ras = render_overlay(image, labels, (1.0, 2.0, 3.0))
    lps = render_overlay(
        image[::-1, ::-1, :], labels[::-1, ::-1, :], (1.0, 2.0, 3.0), orientation="LPS"
    )
    assert np.array_equal(np.asarray(ras), np.asarray(lps))
    permuted = render_overlay(
        image.transpose(2, 0, 1), labels.transpose(2, 0, 1), (3.0, 1.0, 2.0), orientation="SRA"
    )
    assert np.array_equal(np.asarray(ras), np.asarray(permuted))


def test_aspect_follows_the_spacing() -> None:
    """A 9 mm cube stays square on every panel even with 3 mm slices."""
    image = np.zeros((30, 30, 10), dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[10:19, 10:19, 4:7] = 1
    panels = render_planes(image, labels, (1.0, 1.0, 3.0), alpha=1.0, panel_height=300)
    for name, panel in panels.items():
        rows, cols = np.nonzero(np.all(np.asarray(panel) == label_color(1), axis=2))
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert abs(height - width) <= 0.05 * width, (name, height, width)
    # The field of view is 30 x 30 x 30 mm: all three panels are square and equally tall.
    assert {panel.size for panel in panels.values()} == {(300, 300)}


def test_labels_carry_their_colours_blended_over_the_image() -> None:
    """With the default alpha each label pixel leans towards its colour; colours can be set."""
    phantom = make_phantom((64, 64, 32), seed=3)
    colors = {4: (0, 0, 255)}
    panels = render_planes(
        phantom.hu, phantom.labels, phantom.spacing, orientation="LPS", colors=colors
    )
    coronal = np.asarray(panels["coronal"]).astype(int)
    grey = coronal[:, :, 0] == coronal[:, :, 1]
    lung = (coronal[:, :, 2] - coronal[:, :, 0] > 60) & (coronal[:, :, 2] - coronal[:, :, 1] > 60)
    assert lung.sum() > 0.05 * lung.size  # the lungs are large on a coronal cut
    assert grey.sum() > 0.3 * grey.size  # and the rest is grey image
    overlay = render_overlay(
        phantom.hu, phantom.labels, phantom.spacing, orientation="LPS", names=PHANTOM_LABELS
    )
    panel_row = np.asarray(overlay)[: panels["axial"].height + 20]
    assert overlay.mode == "RGB" and overlay.height > panels["axial"].height
    assert panel_row.std() > 10  # not blank


def test_empty_label_map_shows_mid_planes_and_only_grey() -> None:
    """No labels: mid-planes of the image, no colour anywhere in the panels."""
    image = np.zeros((20, 30, 40), dtype=np.float32)
    image[10, 15, 20] = 1.0  # one bright voxel at the centre, seen on all three mid-planes
    labels = np.zeros(image.shape, dtype=np.uint8)
    panels = render_planes(image, labels, (1.0, 1.0, 1.0), window=(0.0, 1.0))
    for panel in panels.values():
        pixels = np.asarray(panel)
        assert np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
        assert np.array_equal(pixels[:, :, 1], pixels[:, :, 2])
        assert pixels.max() > 0
    overlay = render_overlay(image, labels, (1.0, 1.0, 1.0), title="empty")
    assert overlay.width > sum(p.width for p in panels.values())


def test_auto_window_is_soft_tissue_for_ct_and_percentiles_otherwise() -> None:
    """CT in HU gets W400/L40; other intensities get their 0.5-99.5 percentiles."""
    phantom = make_phantom((64, 64, 32), seed=0)
    assert auto_window([phantom.hu[:, :, 16], phantom.hu[:, 32, :]]) == SOFT_TISSUE_WINDOW
    mr = np.linspace(0.0, 1000.0, 10_001, dtype=np.float32).reshape(1, -1)
    low, high = auto_window([mr])
    assert low == pytest.approx(5.0, abs=0.5) and high == pytest.approx(995.0, abs=0.5)


def test_bad_inputs_are_refused() -> None:
    """Shapes that differ, non-3-D arrays and unknown orientations raise ValueError."""
    with pytest.raises(ValueError, match="equal 3-D"):
        render_overlay(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match="orientation"):
        render_overlay(
            np.zeros((4, 4, 4)), np.zeros((4, 4, 4), np.uint8), (1, 1, 1), orientation="RRS"
        )


def test_save_overlay_writes_a_png_atomically(tmp_path: Path) -> None:
    """The PNG is complete at its final name and no temporary file is left behind."""
    phantom = make_phantom((48, 48, 24), seed=1)
    target = save_overlay(
        tmp_path / "previews" / "task-1.png",
        phantom.hu,
        phantom.labels,
        phantom.spacing,
        orientation="LPS",
        names=PHANTOM_LABELS,
        title="task-1",
    )
    with Image.open(target) as png:
        assert png.format == "PNG"
        size = png.size
    expected = render_overlay(
        phantom.hu, phantom.labels, phantom.spacing, orientation="LPS", names=PHANTOM_LABELS,
        title="task-1",
    )  # fmt: skip
    assert size == expected.size
    assert [p.name for p in target.parent.iterdir()] == ["task-1.png"]

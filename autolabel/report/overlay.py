"""Preview images: a label map over its image on three orthogonal planes, as one PNG.

Used by dry runs and reports so that a person can check a pre-label at a glance. numpy and
Pillow only; only the three displayed planes of the image are read, so a 512x512x300 volume
renders in a fraction of a second.

Geometry convention: arrays are indexed ``[i, j, k]`` and ``orientation`` gives the RAS+
axis code of each array axis (``"RAS"``: ``i`` towards the patient's Right, ``j`` Anterior,
``k`` Superior; :attr:`autolabel.records.Volume.orientation` gives the code of a volume,
e.g. ``"LPS"`` for a plain axial DICOM series). Panels are drawn in radiological display
orientation:

* axial: seen from the feet, patient's right on the image's left, anterior at the top;
* coronal: seen from the front, patient's right on the image's left, superior at the top;
* sagittal: seen from the patient's left, anterior on the image's left, superior at the top.

Pixels are square in millimetres (``spacing`` corrects the aspect ratio).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from autolabel.files import atomic_file
from autolabel.inference.postprocess import label_counts

#: Soft-tissue window (level 40 HU, width 400 HU) for CT.
SOFT_TISSUE_WINDOW: tuple[float, float] = (-160.0, 240.0)
#: Colours of label ids 1, 2, ... (cycled); chosen to be told apart on grey.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip
_AXES = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def label_color(label: int) -> tuple[int, int, int]:
    """The default colour of a label id (>= 1)."""
    return PALETTE[(label - 1) % len(PALETTE)]


def render_overlay(
    image: npt.NDArray[np.generic],
    label_map: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    *,
    orientation: str = "RAS",
    window: tuple[float, float] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    names: Mapping[int, str] | None = None,
    title: str = "",
    alpha: float = 0.45,
    panel_height: int = 320,
) -> Image.Image:
    """Render axial, coronal and sagittal planes with the labels blended in, plus a legend.

    * The planes cross at the centroid of the labelled voxels (mid-planes if there are none).
    * ``window`` is ``(low, high)`` in image units; by default a soft-tissue window when the
      image looks like CT in Hounsfield units, else the 0.5-99.5 percentiles of the planes.
    * ``colors`` overrides :func:`label_color` per label id; ``names`` labels the legend,
      which lists the ids present in ``label_map``. ``alpha`` is the label opacity (0..1).
    * Returns an RGB image ``panel_height`` pixels high for the tallest panel, plus title
      and legend rows. Raises ``ValueError`` for shapes that differ or are not 3-D.

    >>> img = render_overlay(np.zeros((8, 8, 8)), np.zeros((8, 8, 8), np.uint8), (1, 1, 1))
    >>> img.mode
    'RGB'
    """
    planes, present, palette = _render(
        image, label_map, spacing, orientation, window, colors, alpha, panel_height
    )
    return _compose(list(planes.values()), tuple(planes), present, palette, names, title)


def render_planes(
    image: npt.NDArray[np.generic],
    label_map: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    *,
    orientation: str = "RAS",
    window: tuple[float, float] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    alpha: float = 0.45,
    panel_height: int = 320,
) -> dict[str, Image.Image]:
    """The three panels of :func:`render_overlay` on their own, keyed ``axial``,
    ``coronal`` and ``sagittal`` (no captions, title or legend)."""
    planes, _, _ = _render(
        image, label_map, spacing, orientation, window, colors, alpha, panel_height
    )
    return planes


def _render(
    image: npt.NDArray[np.generic],
    label_map: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    orientation: str,
    window: tuple[float, float] | None,
    colors: Mapping[int, tuple[int, int, int]] | None,
    alpha: float,
    panel_height: int,
) -> tuple[dict[str, Image.Image], list[int], dict[int, tuple[int, int, int]]]:
    if image.ndim != 3 or image.shape != label_map.shape:
        raise ValueError(f"image {image.shape} and label map {label_map.shape} must be equal 3-D")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    image, label_map, spacing = _to_ras(image, label_map, spacing, orientation)
    centre, present = _centre_and_labels(label_map)
    planes = [
        (image[:, :, centre[2]], label_map[:, :, centre[2]], (spacing[0], spacing[1])),
        (image[:, centre[1], :], label_map[:, centre[1], :], (spacing[0], spacing[2])),
        (image[centre[0], :, :], label_map[centre[0], :, :], (spacing[1], spacing[2])),
    ]
    low, high = window if window is not None else auto_window([p[0] for p in planes])
    palette = {label: label_color(label) for label in present}
    palette.update(colors or {})
    mm_per_pixel = max(
        max(p[0].shape[1] * p[2][1] for p in planes) / panel_height, 1e-6
    )  # the tallest panel gets panel_height pixels
    panels = [
        _panel(plane, labels, pixel, mm_per_pixel, (low, high), palette, alpha)
        for plane, labels, pixel in planes
    ]
    return dict(zip(("axial", "coronal", "sagittal"), panels, strict=True)), present, palette


def save_overlay(
    path: str | os.PathLike[str],
    image: npt.NDArray[np.generic],
    label_map: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    **options: Any,
) -> Path:
    """:func:`render_overlay` written as a PNG at ``path``, atomically (temp file + rename).

    ``options`` are the keyword arguments of :func:`render_overlay`. Returns ``path``.
    """
    picture = render_overlay(image, label_map, spacing, **options)
    target = Path(path)
    with atomic_file(target) as stream:
        picture.save(stream, format="PNG")
    return target


def auto_window(planes: list[npt.NDArray[np.generic]]) -> tuple[float, float]:
    """Display window for the given planes: soft tissue for CT, else percentiles."""
    values = np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in planes])
    if values.size == 0:
        return (0.0, 1.0)
    low, p5, high = (float(v) for v in np.percentile(values, [0.5, 5, 99.5]))
    # CT in HU: air outside the body near -1000 and tissue/bone well above 0.
    if p5 <= -900.0 and high >= 100.0:
        return SOFT_TISSUE_WINDOW
    return (low, high) if high > low else (low, low + 1.0)


def _to_ras(
    image: npt.NDArray[np.generic],
    labels: npt.NDArray[np.integer],
    spacing: tuple[float, float, float],
    orientation: str,
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.integer], tuple[float, float, float]]:
    """Views of the arrays with axes permuted and flipped to RAS (no copy)."""
    codes = orientation.upper()
    if len(codes) != 3 or sorted(_AXES[c][0] for c in codes if c in _AXES) != [0, 1, 2]:
        raise ValueError(f"orientation must be three RAS/LPI axis codes, got {orientation!r}")
    order = [0, 0, 0]
    flips: list[int] = []
    for axis, code in enumerate(codes):
        target, sign = _AXES[code]
        order[target] = axis
        if sign < 0:
            flips.append(target)
    image, labels = image.transpose(order), labels.transpose(order)
    if flips:
        image, labels = np.flip(image, axis=tuple(flips)), np.flip(labels, axis=tuple(flips))
    ras_spacing = (spacing[order[0]], spacing[order[1]], spacing[order[2]])
    return image, labels, ras_spacing


def _centre_and_labels(labels: npt.NDArray[np.integer]) -> tuple[tuple[int, int, int], list[int]]:
    """Centroid (voxel index) of the labelled voxels and the label ids present."""
    if labels.dtype.kind == "u" and labels.dtype.itemsize <= 2:
        counts = label_counts(labels)  # in slabs: never an int64 copy of the whole map
        present = [int(v) for v in np.flatnonzero(counts) if v]
    else:
        present = [int(v) for v in np.unique(labels) if v]
    if not present:
        return (labels.shape[0] // 2, labels.shape[1] // 2, labels.shape[2] // 2), []
    # The centroid only picks the planes to show: every other voxel along each axis is
    # plenty, and an eighth of the work.
    mask = labels[::2, ::2, ::2] != 0
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = mask.sum(axis=others, dtype=np.int64)
        if not profile.any():
            centre.append(labels.shape[axis] // 2)
            continue
        mean = float(np.dot(profile, np.arange(profile.size)) / profile.sum())
        centre.append(min(labels.shape[axis] - 1, round(2 * mean)))
    return (centre[0], centre[1], centre[2]), present


def _panel(
    plane: npt.NDArray[np.generic],
    labels: npt.NDArray[np.integer],
    pixel_mm: tuple[float, float],
    mm_per_pixel: float,
    window: tuple[float, float],
    palette: Mapping[int, tuple[int, int, int]],
    alpha: float,
) -> Image.Image:
    """One plane (axes: columns-then-rows in RAS) in display orientation, blended."""
    # Every plane's axes both run towards R/A/S; displayed, both point left/up.
    plane = np.asarray(plane)[::-1, ::-1].T
    labels = np.asarray(labels)[::-1, ::-1].T
    size = (
        max(1, round(plane.shape[1] * pixel_mm[0] / mm_per_pixel)),
        max(1, round(plane.shape[0] * pixel_mm[1] / mm_per_pixel)),
    )
    low, high = window
    scale = 255.0 / (high - low) if high > low else 1.0
    grey = np.clip((plane.astype(np.float32) - low) * scale, 0, 255).astype(np.uint8)
    grey_up = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    rgb = np.repeat(grey_up[:, :, None], 3, axis=2).astype(np.float32)
    ids = labels.astype(np.int64)
    ids_up = np.asarray(
        Image.fromarray(ids.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    )
    for label, colour in palette.items():
        where = ids_up == label
        if where.any():
            rgb[where] = rgb[where] * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def _compose(
    panels: list[Image.Image],
    captions: tuple[str, ...],
    present: list[int],
    palette: Mapping[int, tuple[int, int, int]],
    names: Mapping[int, str] | None,
    title: str,
) -> Image.Image:
    font = ImageFont.load_default()
    gap, line = 4, 14
    top = line + gap if title else 0
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    legend_rows = max(1, -(-len(present) // 4))
    height = top + line + max(p.height for p in panels) + gap * 2 + legend_rows * line + gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap // 2), title, fill=(255, 255, 255), font=font)
    x = gap
    for panel, caption in zip(panels, captions, strict=True):
        draw.text((x, top), caption, fill=(200, 200, 200), font=font)
        canvas.paste(panel, (x, top + line))
        x += panel.width + gap
    y0 = top + line + max(p.height for p in panels) + gap
    column_width = max(1, (width - gap) // 4)
    if not present:
        draw.text((gap, y0), "no labels", fill=(200, 200, 200), font=font)
    for n, label in enumerate(present):
        x, y = gap + (n % 4) * column_width, y0 + (n // 4) * line
        draw.rectangle((x, y + 2, x + 9, y + 11), fill=palette[label])
        text = f"{label} {names[label]}" if names and label in names else str(label)
        draw.text((x + 13, y), text, fill=(255, 255, 255), font=font)
    return canvas


__all__ = [
    "PALETTE",
    "SOFT_TISSUE_WINDOW",
    "auto_window",
    "label_color",
    "render_overlay",
    "render_planes",
    "save_overlay",
]

"""Synthetic CT phantoms of the trunk: realistic HU, noise and varied shapes, known labels.

The emulator seeds its sample studies with these, ``models/phantom-unet`` is trained on
them, and tests and benchmarks use them as known-answer data. numpy and scipy only.

A phantom lives in DICOM patient coordinates (LPS: x to the patient's left, y posterior,
z superior). Its arrays are indexed ``[i, j, k]`` with ``i`` along +x, ``j`` along +y and
``k`` along +z, so slice ``k`` is the axial image at ``z = origin[2] + k * spacing[2]``.
The same ``seed`` always gives the same phantom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

#: Label ids of the organs in :attr:`Phantom.labels` (0 is background).
PHANTOM_LABELS: dict[int, str] = {1: "liver", 2: "spleen", 3: "kidney", 4: "lung", 5: "bone"}

#: Default field of view in millimetres along x, y and z.
DEFAULT_FOV_MM: tuple[float, float, float] = (360.0, 360.0, 300.0)


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT volume with its ground truth.

    ``hu`` holds Hounsfield units (int16), ``labels`` the organ ids of
    :data:`PHANTOM_LABELS` (uint8) and ``body`` the inside of the skin (bool); all three
    share the shape. ``spacing`` is in millimetres, ``origin`` is the LPS position of voxel
    ``(0, 0, 0)``.
    """

    hu: npt.NDArray[np.int16]
    labels: npt.NDArray[np.uint8]
    body: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine_lps(self) -> npt.NDArray[np.float64]:
        """Voxel index ``(i, j, k, 1)`` to LPS millimetres."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine


class _Grid:
    """Physical coordinates of voxel centres, evaluated lazily per bounding box."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        origin: tuple[float, float, float],
    ) -> None:
        self.shape = shape
        self.axes = [
            origin[a] + spacing[a] * np.arange(shape[a], dtype=np.float32) for a in range(3)
        ]

    def box(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in ``[lo, hi]`` (None if empty)."""
        lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        found = []
        for a in range(3):
            idx = np.nonzero((self.axes[a] >= lo_a[a]) & (self.axes[a] <= hi_a[a]))[0]
            if idx.size == 0:
                return None
            found.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return (found[0], found[1], found[2])

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[npt.NDArray[np.float32], ...]:
        """Broadcastable x, y, z coordinate arrays of a box."""
        x = self.axes[0][box[0]][:, None, None]
        y = self.axes[1][box[1]][None, :, None]
        z = self.axes[2][box[2]][None, None, :]
        return (x, y, z)


def _ellipsoid(
    grid: _Grid,
    rng: np.random.Generator,
    centre: npt.ArrayLike,
    radii: npt.ArrayLike,
    wobble: float = 0.12,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None:
    """A randomly rotated (about z) ellipsoid with a lumpy surface: (box, mask in box)."""
    c = np.asarray(centre, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    reach = r.max() * (1.0 + wobble) + 1.0
    box = grid.box(c - reach, c + reach)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    x, y, z = x - c[0], y - c[1], z - c[2]
    angle = rng.uniform(-0.3, 0.3)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (cos * x + sin * y) / r[0]
    v = (-sin * x + cos * y) / r[1]
    w = z / r[2]
    dist = u * u + v * v + w * w
    # Lumpy surface: low-order harmonics of the direction, different per organ.
    theta = np.arctan2(v, u)
    phi = np.arctan2(w, np.sqrt(u * u + v * v) + 1e-6)
    lumps = np.zeros_like(dist)
    for order in (2, 3, 4):
        amp_t, amp_p = rng.uniform(-wobble, wobble, size=2) / order * 2
        shift_t, shift_p = rng.uniform(0, 2 * np.pi, size=2)
        lumps = (
            lumps + amp_t * np.cos(order * theta + shift_t) + amp_p * np.cos(order * phi + shift_p)
        )
    return box, dist <= (1.0 + lumps) ** 2


def make_phantom(
    shape: tuple[int, int, int] = (128, 128, 64),
    *,
    seed: int = 0,
    fov_mm: tuple[float, float, float] = DEFAULT_FOV_MM,
    noise_hu: float = 12.0,
) -> Phantom:
    """Make one trunk phantom of ``shape`` voxels covering ``fov_mm``.

    Organs (liver, spleen, kidneys, lungs, spine and ribs) vary in size, position,
    rotation and outline with ``seed``; tissues get contrast-enhanced CT values, then a
    mild blur (partial volume) and Gaussian noise of ``noise_hu`` standard deviation.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be three sizes of at least 8, got {shape}")
    rng = np.random.default_rng(seed)
    spacing = (fov_mm[0] / shape[0], fov_mm[1] / shape[1], fov_mm[2] / shape[2])
    origin = (
        -fov_mm[0] / 2 + spacing[0] / 2,
        -fov_mm[1] / 2 + spacing[1] / 2,
        -fov_mm[2] / 2 + spacing[2] / 2,
    )
    grid = _Grid(shape, spacing, origin)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    # Body: an elliptic cylinder, a fat layer under the skin, soft tissue inside.
    half_w = rng.uniform(135, 165)
    half_d = rng.uniform(95, 120)
    fat = rng.uniform(8, 20)
    x, y, _ = grid.coords((slice(None), slice(None), slice(0, 1)))
    ellipse = (x / half_w) ** 2 + (y / half_d) ** 2
    inner = (x / (half_w - fat)) ** 2 + (y / (half_d - fat)) ** 2
    body2d = (ellipse <= 1.0)[:, :, 0]
    body = np.repeat(body2d[:, :, None], shape[2], axis=2)
    hu[body] = rng.uniform(-110, -90)
    hu[np.repeat((inner <= 1.0)[:, :, :1], shape[2], axis=2)] = rng.uniform(35, 50)

    def paint(
        found: tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None,
        value: float,
        label: int,
    ) -> None:
        if found is None:
            return
        box, mask = found
        mask = mask & body[box]
        hu[box][mask] = value
        if label:
            labels[box][mask] = label

    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    diaphragm = rng.uniform(0, 40)
    # Heart (soft tissue, unlabelled) and lungs above the diaphragm.
    paint(
        _ellipsoid(
            grid, rng, (jitter(10) + 15, -25 + jitter(8), diaphragm + 55), (55, 50, 55), 0.08
        ),
        rng.uniform(40, 60),
        0,
    )
    for side in (-1, 1):
        lung = _ellipsoid(
            grid,
            rng,
            (side * (70 + jitter(8)), 5 + jitter(8), diaphragm + 95),
            (rng.uniform(45, 60), rng.uniform(65, 80), rng.uniform(80, 100)),
        )
        if lung is not None:
            box, mask = lung
            x_b, _, _ = grid.coords(box)
            mask = mask & (np.abs(x_b) > 12)  # mediastinum
            paint((box, mask), rng.uniform(-870, -820), 4)
    # Abdomen: liver on the patient's right (-x), spleen left, kidneys posterior.
    paint(
        _ellipsoid(
            grid,
            rng,
            (-60 + jitter(10), -5 + jitter(10), diaphragm - 30 + jitter(10)),
            (rng.uniform(65, 85), rng.uniform(60, 80), rng.uniform(45, 65)),
        ),
        rng.uniform(95, 115),
        1,
    )
    paint(
        _ellipsoid(
            grid,
            rng,
            (90 + jitter(8), 35 + jitter(8), diaphragm - 25 + jitter(8)),
            (rng.uniform(22, 32), rng.uniform(35, 50), rng.uniform(35, 50)),
        ),
        rng.uniform(120, 140),
        2,
    )
    kidney_hu = rng.uniform(160, 190)
    for side in (-1, 1):
        paint(
            _ellipsoid(
                grid,
                rng,
                (side * (65 + jitter(6)), 55 + jitter(6), diaphragm - 90 + jitter(10)),
                (rng.uniform(22, 30), rng.uniform(25, 32), rng.uniform(45, 60)),
                0.08,
            ),
            kidney_hu,
            3,
        )
    # Spine: a vertebral column along z with a spinal canal, and ribs above the diaphragm.
    spine_y = half_d - rng.uniform(45, 60)
    spine = grid.box((-40, spine_y - 40, -1e9), (40, spine_y + 40, 1e9))
    if spine is not None:
        x_s, y_s, z_s = grid.coords(spine)
        column = ((x_s / 18) ** 2 + ((y_s - spine_y) / 16) ** 2 <= 1) | (
            (np.abs(x_s) < 5) & (y_s > spine_y) & (y_s < spine_y + 32)
        )
        canal = (x_s / 7) ** 2 + ((y_s - spine_y - 20) / 7) ** 2 <= 1
        discs = np.mod(z_s - jitter(10), 30.0) < 5
        bone = np.broadcast_to(column & ~canal, (column.shape[0], column.shape[1], z_s.shape[2]))
        bone = bone & ~(discs & ((x_s / 18) ** 2 + ((y_s - spine_y) / 16) ** 2 <= 1))
        mask = bone & body[spine]
        hu[spine][mask] = rng.uniform(550, 750)
        labels[spine][mask] = 5
    rib_box = grid.box((-1e9, -1e9, diaphragm - 20), (1e9, 1e9, 1e9))
    if rib_box is not None:
        x_r, y_r, z_r = grid.coords(rib_box)
        depth = rng.uniform(10, 16)
        shell = ((x_r / (half_w - fat - depth)) ** 2 + (y_r / (half_d - fat - depth)) ** 2 <= 1) & (
            (x_r / (half_w - fat - depth - 8)) ** 2 + (y_r / (half_d - fat - depth - 8)) ** 2 > 1
        )
        ribs = shell & (np.mod(z_r + jitter(10), 25.0) < 9) & (np.abs(x_r) > 20)
        mask = ribs & body[rib_box]
        hu[rib_box][mask] = rng.uniform(450, 650)
        labels[rib_box][mask] = 5

    hu = ndimage.gaussian_filter(hu, sigma=0.6, mode="nearest")
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    hu_i16 = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(hu=hu_i16, labels=labels, body=body, spacing=spacing, origin=origin)

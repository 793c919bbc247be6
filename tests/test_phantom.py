"""The synthetic CT phantoms are the known-answer data of the demo, the models and the tests."""

from __future__ import annotations

import numpy as np

from autolabel.emulator.phantom import PHANTOM_LABELS, make_phantom


def test_same_seed_same_phantom_other_seed_other_shapes() -> None:
    first = make_phantom((48, 48, 32), seed=7)
    again = make_phantom((48, 48, 32), seed=7)
    other = make_phantom((48, 48, 32), seed=8)
    assert np.array_equal(first.hu, again.hu)
    assert np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)


def test_every_organ_present_with_realistic_hu() -> None:
    phantom = make_phantom((96, 96, 64), seed=3)
    expected_hu = {
        "liver": (80, 130),
        "spleen": (105, 155),
        "kidney": (140, 210),
        "lung": (-900, -780),
        "bone": (300, 800),
    }
    for label_id, name in PHANTOM_LABELS.items():
        mask = phantom.labels == label_id
        assert mask.sum() > 50, name
        lo, hi = expected_hu[name]
        assert lo <= float(np.median(phantom.hu[mask])) <= hi, name
    assert np.all(phantom.labels[~phantom.body] == 0)
    assert float(np.median(phantom.hu[~phantom.body])) < -950


def test_geometry_is_physical() -> None:
    phantom = make_phantom((64, 64, 50), seed=0, fov_mm=(320.0, 320.0, 250.0))
    assert phantom.spacing == (5.0, 5.0, 5.0)
    centre = phantom.affine_lps @ np.array([31.5, 31.5, 24.5, 1.0])
    assert np.allclose(centre[:3], 0.0)

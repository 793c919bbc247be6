"""Label map + model labels + taxonomy -> series entry and label file (known answers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autolabel.convert import (
    Category,
    build_segment_map,
    load_mapping,
    to_series,
)
from autolabel.errors import ConfigError, ConversionError
from autolabel.imaging import read_label_nifti
from autolabel.records import Volume


def _obj(category: str, class_id: int, label_type: str = "SEGMENTATION", **extra):
    return {"category": category, "classId": class_id, "labelType": label_type, **extra}


TAXONOMY = {
    "name": "Abdomen CT v1",
    "isNew": True,
    "objectTypes": [
        _obj("Liver", 0, color="#E6194B"),
        _obj("Spleen", 1),
        _obj("Kidney", 2),
        _obj("Tumor", 3, "BBOX"),
        _obj("Tumor", 4),
        _obj("Lesion", 5, "POLYGON"),
        _obj("Old organ", 6, archived=True),
        _obj("Aorta", 7),
        _obj("AORTA", 8),
    ],
}


@pytest.fixture
def volume():
    affine = np.diag([-0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return Volume(array=np.zeros((12, 10, 6), dtype=np.int16, order="F"), affine=affine)


# ----------------------------------------------------------------- segment map


def test_names_match_exactly_or_case_insensitively():
    """'liver' finds 'Liver'; 'Spleen' matches exactly; values are 1..n in model-id order."""
    seg = build_segment_map({1: "liver", 2: "Spleen"}, TAXONOMY)
    assert seg.categories == {1: Category("Liver", 0), 2: Category("Spleen", 1)}
    assert seg.values == {1: 1, 2: 2}


def test_ambiguous_case_insensitive_name_is_refused():
    """'aorta' could be 'Aorta' or 'AORTA': refused; the exact name works."""
    with pytest.raises(ConversionError, match="matches several segmentation categories"):
        build_segment_map({1: "aorta"}, TAXONOMY)
    assert build_segment_map({1: "AORTA"}, TAXONOMY).categories[1] == Category("AORTA", 8)


def test_mapping_by_name_class_id_and_model_id():
    """Mapping values may be a name, a classId (int or digits); keys a class name or id."""
    seg = build_segment_map(
        {1: "organ_a", 2: "organ_b", 3: "organ_c"},
        TAXONOMY,
        {"organ_a": "kidney", 2: 1, "3": "0"},
    )
    assert [seg.categories[seg.values[i]].name for i in (1, 2, 3)] == ["Kidney", "Spleen", "Liver"]


def test_same_name_under_several_label_types_picks_the_segmentation():
    """'Tumor' is both a BBOX and a SEGMENTATION type: the segmentation one is used."""
    assert build_segment_map({1: "Tumor"}, TAXONOMY).categories[1] == Category("Tumor", 4)


@pytest.mark.parametrize(("name", "reason"), [("Lesion", "POLYGON"), ("Old organ", "archived")])
def test_unusable_categories_are_refused(name, reason):
    """A polygon category or an archived one cannot receive segmentation voxels."""
    with pytest.raises(ConversionError, match=reason):
        build_segment_map({1: name}, TAXONOMY)


def test_unmapped_classes_are_listed_or_dropped_when_allowed():
    """Unknown classes fail with the list of them and of the categories; allowed -> dropped."""
    with pytest.raises(ConversionError, match=r"'pancreas' \(id 2\), 'colon' \(id 3\).*'Liver'"):
        build_segment_map({1: "liver", 2: "pancreas", 3: "colon"}, TAXONOMY)
    seg = build_segment_map({1: "liver", 2: "pancreas"}, TAXONOMY, allow_unmapped=True)
    assert seg.values == {1: 1, 2: 0}


def test_none_drops_a_class_and_shared_categories_merge():
    """None drops; two model classes mapped to one category share its value."""
    seg = build_segment_map(
        {1: "kidney_left", 2: "kidney_right", 3: "vessels", 4: "spleen"},
        TAXONOMY,
        {"kidney_left": "Kidney", "kidney_right": "Kidney", "vessels": None},
    )
    assert seg.values == {1: 1, 2: 1, 3: 0, 4: 2}
    assert seg.categories == {1: Category("Kidney", 2), 2: Category("Spleen", 1)}


def test_explicit_mapping_to_a_missing_category_fails_even_when_unmapped_allowed():
    """A typo in the mapping is never silently dropped."""
    with pytest.raises(ConversionError, match="mapped to 'Livr', which is not in the taxonomy"):
        build_segment_map({1: "liver"}, TAXONOMY, {"liver": "Livr"}, allow_unmapped=True)


def test_mapping_keys_that_are_not_model_classes_are_config_errors():
    """A mapping for a class the model does not have is a configuration mistake."""
    with pytest.raises(ConfigError, match=r"\['livr'\]"):
        build_segment_map({1: "liver"}, TAXONOMY, {"livr": "Liver"})


def test_v1_taxonomy_is_refused():
    """Taxonomy V1 (categories tree, no objectTypes) is not supported."""
    with pytest.raises(ConversionError, match="only Taxonomy V2"):
        build_segment_map({1: "liver"}, {"name": "old", "categories": []})


def test_load_mapping_toml_and_json(tmp_path):
    """TOML (false drops, optional [classes] table) and JSON (null drops) read the same."""
    (tmp_path / "m.toml").write_text(
        '[classes]\nliver = "Liver"\nvessels = false\nkidney_left = 2\n', encoding="utf-8"
    )
    (tmp_path / "m.json").write_text(
        json.dumps({"liver": "Liver", "vessels": None, "kidney_left": 2}), encoding="utf-8"
    )
    expected = {"liver": "Liver", "vessels": None, "kidney_left": 2}
    assert load_mapping(tmp_path / "m.toml") == expected
    assert load_mapping(tmp_path / "m.json") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("liver = [1, 2]\n", "maps to"), ("liver = \n", "cannot read")],
)
def test_bad_mapping_files_are_config_errors(tmp_path, text, message):
    """A list value or broken TOML is a ConfigError naming the problem."""
    (tmp_path / "m.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_mapping(tmp_path / "m.toml")


# ----------------------------------------------------------------- to_series


def _blobs(shape) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8, order="F")
    labels[1:4, 1:4, 1:3] = 2  # liver, 18 voxels
    labels[7:10, 6:9, 1:3] = 2  # liver, a second separate blob
    labels[5:7, 1:3, 4:6] = 5  # spleen, 8 voxels
    labels[11, 9, 5] = 7  # vessels (dropped)
    labels[0, 9, 0] = 5  # a one-voxel spleen speck
    return labels


MODEL = {2: "liver", 5: "spleen", 7: "vessels"}


def test_semantic_series_renumbers_compactly_and_writes_on_the_image_grid(tmp_path, volume):
    """Model ids 2, 5, 7 become 1, 2 and dropped; file on the image grid where asked."""
    seg = build_segment_map(MODEL, TAXONOMY, {"vessels": None})
    labels = _blobs(volume.shape)
    target = tmp_path / "out" / "series-1.nii.gz"
    entry = to_series(labels, volume, seg, name="series-1", path=target)
    assert entry == {
        "name": "series-1",
        "segmentations": str(target),
        "segmentMap": {"1": {"category": "Liver"}, "2": {"category": "Spleen"}},
    }
    data, affine = read_label_nifti(target)
    expected = np.select([labels == 2, labels == 5], [1, 2], 0)
    assert np.array_equal(data, expected)
    assert np.allclose(affine, volume.affine)
    json.dumps(entry)  # wire-ready


def test_min_component_size_removes_specks(tmp_path, volume):
    """A one-voxel speck goes with min_component_voxels=2; real blobs stay."""
    seg = build_segment_map(MODEL, TAXONOMY, {"vessels": None})
    entry = to_series(
        _blobs(volume.shape),
        volume,
        seg,
        name="s",
        path=tmp_path / "s.nii.gz",
        min_component_voxels=2,
    )
    data, _ = read_label_nifti(entry["segmentations"])
    assert data[0, 9, 0] == 0
    assert np.count_nonzero(data == 2) == 8
    assert np.count_nonzero(data == 1) == 36


def test_instances_split_connected_components(tmp_path, volume):
    """Two liver blobs and one spleen blob become three instances with their categories."""
    seg = build_segment_map(MODEL, TAXONOMY, {"vessels": None})
    entry = to_series(
        _blobs(volume.shape),
        volume,
        seg,
        name="s",
        path=tmp_path / "s.nii.gz",
        instances=True,
        min_component_voxels=2,
    )
    assert entry["segmentMap"] == {
        "1": {"category": "Liver"},
        "2": {"category": "Liver"},
        "3": {"category": "Spleen"},
    }
    data, _ = read_label_nifti(entry["segmentations"])
    assert {int(v): int(np.count_nonzero(data == v)) for v in (1, 2, 3)} == {1: 18, 2: 18, 3: 8}
    assert data[2, 2, 1] != data[8, 7, 1]  # the two liver blobs are different instances


@pytest.mark.parametrize("policy", ["skip", "submit"])
def test_empty_prediction_policy(tmp_path, volume, policy):
    """Nothing labelled: skip writes nothing; submit writes an empty map."""
    seg = build_segment_map(MODEL, TAXONOMY, {"vessels": None})
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[3, 3, 3] = 7  # only a dropped class
    target = tmp_path / "s.nii.gz"
    entry = to_series(labels, volume, seg, name="s", path=target, empty=policy)
    if policy == "skip":
        assert entry is None
        assert not target.exists()
        return
    assert entry is not None and entry["segmentMap"] == {}
    assert not np.any(read_label_nifti(target)[0])
    assert "metaData" not in entry


def test_bool_masks_are_accepted(tmp_path, volume):
    """A boolean mask for a one-class model is label id 1."""
    seg = build_segment_map({1: "liver"}, TAXONOMY)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[2:5, 2:5, 2:4] = True
    entry = to_series(mask, volume, seg, name="s", path=tmp_path / "s.nii.gz")
    assert entry is not None and entry["segmentMap"] == {"1": {"category": "Liver"}}
    assert np.array_equal(read_label_nifti(entry["segmentations"])[0], mask)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda s: np.zeros(s, np.float32), {}, "dtype float32"),
        (lambda s: np.zeros(s[:2], np.uint8), {}, "2-D"),
        (lambda s: np.zeros((s[0], s[1], s[2] + 1), np.uint8), {}, "exact voxel grid"),
        (lambda s: np.zeros(s, np.uint8), {"affine": np.eye(4)}, "affine differs"),
        (lambda s: np.full(s, 9, np.uint8), {}, r"values \[9\]"),
        (lambda s: np.full(s, 3, np.uint8), {}, r"values \[3\]"),
        (lambda s: np.full(s, -2, np.int16), {}, r"values \[-2\]"),
    ],
    ids=["float", "2d", "shape", "affine", "above-max", "undeclared-gap", "negative"],
)
def test_invalid_outputs_are_conversion_errors(tmp_path, volume, make, kwargs, message):
    """Bad dtype, rank, shape, affine or undeclared values are refused; nothing is written."""
    seg = build_segment_map(MODEL, TAXONOMY, {"vessels": None})
    with pytest.raises(ConversionError, match=message):
        to_series(make(volume.shape), volume, seg, name="s", path=tmp_path / "s.nii.gz", **kwargs)
    assert list(tmp_path.iterdir()) == []

"""Fusion rules on hand-made probability volumes, and the fusion settings' defaults, checks and JSON."""
import json

import numpy as np
import pytest

from strokeseg.errors import ConfigError, InputError
from strokeseg.infer.fusion import FUSION_RULES, FusionSettings, fuse, fused_mask, fused_probability

MAJORITY = FusionSettings(rule="majority")


def planes_of(*values):
    """Three 1×1×N 'volumes' whose voxel i holds values[plane][i]."""
    columns = np.array(values, dtype=np.float32).T        # (planes, voxels)
    return {name: columns[k].reshape(1, 1, -1) for k, name in enumerate(("axial", "sagittal", "coronal"))}


def test_mean_is_upstreams_soft_average_with_greater_or_equal():
    probs = planes_of([0.5, 0.5, 0.5], [0.75, 0.25, 0.5], [0.125, 0.625, 0.75], [0.0, 0.0, 1.0],
                      [0.49, 0.5, 0.5])
    mask = fuse(probs)
    assert mask.dtype == np.uint8
    # a mean of exactly 0.5 is lesion (upstream's >=), also from unequal planes; 1/3 and 0.497 are not
    assert mask.ravel().tolist() == [1, 1, 1, 0, 0]
    np.testing.assert_array_equal(fused_probability(probs).ravel()[:3], np.float32([0.5, 0.5, 0.5]))
    assert fuse(probs, FusionSettings(threshold=0.3)).ravel().tolist() == [1, 1, 1, 1, 1]


def test_majority_counts_planes_strictly_above_the_threshold():
    probs = planes_of([0.5, 0.5, 0.5], [0.51, 0.51, 0.0], [0.51, 0.0, 0.0], [1.0, 1.0, 1.0], [0.9, 0.9, 0.5])
    assert fuse(probs, MAJORITY).ravel().tolist() == [0, 1, 0, 1, 1]
    # with two planes both must vote; with one plane it is the plane's own mask
    two = {k: v for k, v in probs.items() if k != "coronal"}
    assert fuse(two, MAJORITY).ravel().tolist() == [0, 1, 0, 1, 1]
    assert fuse({"axial": probs["axial"]}, MAJORITY).ravel().tolist() == [0, 1, 1, 1, 1]


def test_weighted_mean():
    probs = planes_of([1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.5, 0.5, 0.5])
    weighted = FusionSettings(rule="weighted_mean", weights={"axial": 2.0, "sagittal": 1.0, "coronal": 1.0})
    assert fuse(probs, weighted).ravel().tolist() == [1, 0, 1]
    np.testing.assert_allclose(fused_probability(probs, weighted).ravel(), [0.5, 0.375, 0.5])
    assert fuse(probs).ravel().tolist() == [0, 1, 1]          # the plain mean: 1/3, 1/2, 1/2
    equal = FusionSettings(rule="weighted_mean", weights={k: 1.0 for k in weighted.weights})
    np.testing.assert_array_equal(fuse(probs, equal), fuse(probs))


def test_settings_refuse_what_no_fusion_could_apply():
    with pytest.raises(ConfigError, match="fusion rule 'vote' is not one of"):
        FusionSettings(rule="vote")
    with pytest.raises(ConfigError, match="needs one weight per plane"):
        FusionSettings(rule="weighted_mean")
    with pytest.raises(ConfigError, match="needs one weight per plane"):
        FusionSettings(rule="weighted_mean", weights={"axial": 1, "sagittal": 1})
    with pytest.raises(ConfigError, match="not all 0"):
        FusionSettings(rule="weighted_mean", weights={"axial": 0, "sagittal": 0, "coronal": 0})
    with pytest.raises(ConfigError, match="only used by the weighted_mean"):
        FusionSettings(weights={"axial": 1, "sagittal": 1, "coronal": 1})
    for field, value in [("threshold", 1.5), ("threshold", True), ("min_lesion_voxels", -1),
                         ("min_lesion_voxels", 2.5), ("connectivity", 8), ("flip_tta", "yes")]:
        with pytest.raises(ConfigError, match=field):
            FusionSettings(**{field: value})


def test_settings_round_trip_through_fusion_json_and_ignore_provenance(tmp_path):
    settings = FusionSettings(rule="weighted_mean", threshold=0.4, weights={"axial": 0.7, "sagittal": 0.5,
                                                                           "coronal": 0.6},
                              min_lesion_voxels=12, connectivity=26, flip_tta=True)
    path = tmp_path / "fusion.json"
    path.write_text(settings.to_json(model="raxnet", sources={"axial": []}))
    record = json.loads(path.read_text())
    assert record["fusion"] == "weighted_mean" and record["model"] == "raxnet"   # the file's key for the rule
    assert FusionSettings.from_json(path) == settings
    assert FusionSettings.from_record({"fusion": "majority", "threshold": None}) == MAJORITY   # null = default
    assert settings.replace(threshold=None, min_lesion_voxels=3).min_lesion_voxels == 3
    with pytest.raises(ValueError, match="clash"):
        settings.to_json(threshold=0.1)
    path.write_text(json.dumps({"fusion": "mean", "threshold": 7}))
    with pytest.raises(InputError, match=r"fusion\.json: fusion threshold must be in \[0, 1\]"):
        FusionSettings.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        FusionSettings.from_json(path)


def test_fused_mask_removes_components_below_the_settings_size():
    probs = planes_of([0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.9, 0.9, 0.9])   # two separate 1-voxel lesions
    assert fused_mask(probs).sum() == 2
    assert fused_mask(probs, FusionSettings(min_lesion_voxels=2)).sum() == 0


def test_clear_errors():
    probs = planes_of([0.1, 0.2, 0.3])
    weighted = FusionSettings(rule="weighted_mean", weights={"axial": 1, "sagittal": 1, "coronal": 1})
    with pytest.raises(ValueError, match="no weight for other"):
        fuse({**probs, "other": probs["axial"]}, weighted)
    with pytest.raises(ValueError, match="differ in shape"):
        fuse({"axial": np.zeros((2, 2, 2)), "sagittal": np.zeros((2, 2, 3))})
    with pytest.raises(ValueError, match="at least one"):
        fuse({})
    assert FUSION_RULES == ("mean", "majority", "weighted_mean")


@pytest.mark.parametrize("record, key", [
    ({"flip_tta": "no"}, "flip_tta"),                       # text is not a boolean: TTA stays off
    ({"threshold": "high"}, "threshold"),
    ({"min_lesion_voxels": "5"}, "min_lesion_voxels"),
    ({"min_lesion_voxels": float("inf")}, "min_lesion_voxels"),   # JSON's 1e400
    ({"fusion": "weighted_mean", "weights": {"axial": "x", "sagittal": 1, "coronal": 1}}, "weights"),
    ({"fusion": "weighted_mean", "weights": {"axial": 1, "sagittal": 1}}, "weights"),
    ({"fusion": "weighted_mean"}, "weights"),
    ({"fusion": "median"}, "fusion"),
    ({"fusion": ["mean"]}, "fusion"),
    ({"weights": {"axial": 1, "sagittal": 1, "coronal": 1}}, "weights"),
    ({"connectivity": 4}, "connectivity"),
])
def test_every_fusion_json_fault_names_the_file_and_the_key(tmp_path, record, key):
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError) as info:
        FusionSettings.from_json(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and key in message.split(": ", 1)[1] and "\n" not in message

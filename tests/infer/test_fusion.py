"""Fusion rules on hand-made probability volumes, component removal and the choice of its size."""
import numpy as np
import pytest

from strokeseg.infer.fusion import (FUSION_RULES, choose_min_component_size, component_size_scores, fuse,
                              fused_probability, remove_small_components)


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
    assert fuse(probs, threshold=0.3).ravel().tolist() == [1, 1, 1, 1, 1]


def test_majority_counts_planes_strictly_above_the_threshold():
    probs = planes_of([0.5, 0.5, 0.5], [0.51, 0.51, 0.0], [0.51, 0.0, 0.0], [1.0, 1.0, 1.0], [0.9, 0.9, 0.5])
    assert fuse(probs, "majority").ravel().tolist() == [0, 1, 0, 1, 1]
    # with two planes both must vote; with one plane it is the plane's own mask
    two = {k: v for k, v in probs.items() if k != "coronal"}
    assert fuse(two, "majority").ravel().tolist() == [0, 1, 0, 1, 1]
    assert fuse({"axial": probs["axial"]}, "majority").ravel().tolist() == [0, 1, 1, 1, 1]


def test_weighted_mean():
    probs = planes_of([1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.5, 0.5, 0.5])
    weights = {"axial": 2.0, "sagittal": 1.0, "coronal": 1.0}
    assert fuse(probs, "weighted_mean", weights=weights).ravel().tolist() == [1, 0, 1]
    np.testing.assert_allclose(fused_probability(probs, "weighted_mean", weights).ravel(), [0.5, 0.375, 0.5])
    assert fuse(probs).ravel().tolist() == [0, 1, 1]          # the plain mean: 1/3, 1/2, 1/2
    equal = {k: 1.0 for k in weights}
    np.testing.assert_array_equal(fuse(probs, "weighted_mean", weights=equal), fuse(probs))


def test_clear_errors():
    probs = planes_of([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown fusion rule 'vote'"):
        fuse(probs, "vote")
    with pytest.raises(ValueError, match="needs weights"):
        fuse(probs, "weighted_mean")
    with pytest.raises(ValueError, match="missing weight.*coronal"):
        fuse(probs, "weighted_mean", weights={"axial": 1, "sagittal": 1})
    with pytest.raises(ValueError, match="only used by the weighted_mean"):
        fuse(probs, "mean", weights={"axial": 1, "sagittal": 1, "coronal": 1})
    with pytest.raises(ValueError, match="differ in shape"):
        fuse({"axial": np.zeros((2, 2, 2)), "sagittal": np.zeros((2, 2, 3))})
    with pytest.raises(ValueError, match="at least one"):
        fuse({})
    assert FUSION_RULES == ("mean", "majority", "weighted_mean")


def test_component_removal_uses_6_connectivity():
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:4, 1:4, 1:4] = 1                  # 27 voxels
    mask[8, 8, 8] = mask[9, 9, 9] = 1        # two single voxels touching only by a corner
    mask[8:10, 2, 2] = 1                     # 2 voxels
    kept = remove_small_components(mask, 2)
    assert kept.dtype == np.uint8
    assert kept.sum() == 27 + 2 and kept[8, 8, 8] == 0 and kept[9, 9, 9] == 0
    assert remove_small_components(mask, 3).sum() == 27
    np.testing.assert_array_equal(remove_small_components(mask, 0), mask)
    # 26-connectivity joins the corner-touching voxels into one component of 2
    assert remove_small_components(mask, 2, connectivity=26).sum() == 27 + 2 + 2
    assert remove_small_components(np.zeros((3, 3, 3)), 5).sum() == 0


def case(truth_blob, false_sizes, shape=(30, 30, 30), probability=False):
    """A prediction that finds the true blob and adds false positive lines of the given sizes."""
    truth = np.zeros(shape, np.uint8)
    truth[truth_blob] = 1
    pred = truth.astype(np.float32) * 0.9 if probability else truth.copy()
    for i, size in enumerate(false_sizes):
        pred[25, 2 * i, :size] = 0.8 if probability else 1
    return pred, truth


def test_component_size_choice_maximises_mean_dice_and_prefers_the_smallest():
    blob = (slice(5, 10), slice(5, 10), slice(5, 10))    # 125 voxels
    cases = [case(blob, [3, 4]), case(blob, [2], probability=True), case(blob, [])]
    scores = component_size_scores(cases, [0, 3, 5, 6, 200])
    assert scores[0] < scores[3] < scores[5] == scores[6] == 1.0
    assert scores[200] == pytest.approx(0.0)               # the lesion itself is removed
    assert choose_min_component_size(cases, [6, 200, 5, 0, 3]) == 5   # tie between 5 and 6
    # an empty prediction against an empty truth scores 1 (ATLAS rule)
    empty = np.zeros((4, 4, 4), np.uint8)
    assert component_size_scores([(empty, empty)], [0]) == {0: 1.0}
    with pytest.raises(ValueError, match="candidates"):
        choose_min_component_size(cases, [])
    with pytest.raises(ValueError, match="no cases"):
        choose_min_component_size([], [1])

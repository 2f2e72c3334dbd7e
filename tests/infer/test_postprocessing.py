"""Component removal, the largest component, and the choice between them on hand-made volumes."""
import json

import numpy as np
import pytest

from strokeseg.errors import ConfigError, InputError
from strokeseg.infer.fusion import FusionSettings, fused_mask
from strokeseg.infer.postprocessing import (
    LARGEST,
    choose_min_component_size,
    component_size_scores,
    keep_largest_component,
    postprocess,
    postprocess_table,
    remove_small_components,
    rule_scores,
)


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


def test_postprocess_table_streams_the_cases_once_and_agrees_with_the_choice():
    blob = (slice(5, 10), slice(5, 10), slice(5, 10))
    cases = [case(blob, [3, 4]), case(blob, [2], probability=True), case(blob, [])]
    consumed = []

    def stream():
        for item in cases:
            consumed.append(1)
            yield item

    table, rule, size = postprocess_table(stream(), [6, 200, 5, 0, 3])
    # the largest component also scores 1.0 here: a tie, so the gentlest rule (size 5) wins
    assert len(consumed) == 3 and (rule, size) == ("min_size", 5)
    assert size == choose_min_component_size(cases, [6, 200, 5, 0, 3])
    assert list(table["rule"]) == ["min_size"] * 5 + [LARGEST] and set(table["n_subjects"]) == {3}
    assert list(table["min_lesion_voxels"][:5]) == [6, 200, 5, 0, 3] and table["min_lesion_voxels"].isna().iloc[5]
    assert table.loc[table["chosen"], "min_lesion_voxels"].tolist() == [5]
    scores = component_size_scores(cases, [6, 200, 5, 0, 3])
    assert table[:5].set_index("min_lesion_voxels")["mean_dice"].to_dict() == scores
    assert table["mean_dice"].iloc[5] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- largest component
def test_keep_largest_component_two_components_ties_and_empty():
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:4, 1:4, 1:4] = 1                  # 27 voxels
    mask[8:10, 2, 2] = 1                     # 2 voxels
    kept = keep_largest_component(mask)
    assert kept.dtype == np.uint8 and kept.sum() == 27 and kept[1:4, 1:4, 1:4].all()
    # a tie: two 2-voxel lines; the one met first in C order (the lowest label) is kept, every time
    tie = np.zeros((6, 6, 6), bool)
    tie[4, 0:2, 0] = True
    tie[0, 4:6, 5] = True
    kept = keep_largest_component(tie)
    assert kept.sum() == 2 and kept[0, 4, 5] and kept[0, 5, 5]
    mirrored = keep_largest_component(tie[::-1])        # mirrored, the other line comes first
    assert mirrored.sum() == 2 and mirrored[1, 0, 0] and mirrored[1, 1, 0]
    assert keep_largest_component(np.zeros((3, 3, 3))).sum() == 0
    assert keep_largest_component(np.zeros((3, 3, 3))).dtype == np.uint8
    # corner-touching voxels are two components under 6-connectivity, one under 26
    corner = np.zeros((4, 4, 4), np.uint8)
    corner[0, 0, 0] = corner[1, 1, 1] = 1
    corner[3, 3, 0:2] = 1
    assert keep_largest_component(corner)[3, 3, 0:2].all() and keep_largest_component(corner).sum() == 2
    assert keep_largest_component(corner, connectivity=26).sum() == 2        # tie of 2 and 2: the first
    assert keep_largest_component(corner, connectivity=26)[0, 0, 0] == 1
    # the size removal first, then the largest of what is left
    np.testing.assert_array_equal(postprocess(mask, 30, largest=True), np.zeros_like(mask))
    np.testing.assert_array_equal(postprocess(mask, 0, largest=False), mask)


def false_positive_case(false_side: int, shape=(30, 30, 30)):
    """The truth blob (125 voxels) found exactly, plus one false-positive cube of side ``false_side``."""
    truth = np.zeros(shape, np.uint8)
    truth[5:10, 5:10, 5:10] = 1
    pred = truth.copy()
    pred[20:20 + false_side, 20:20 + false_side, 20:20 + false_side] = 1
    return pred, truth


def test_auto_picks_the_largest_component_only_where_it_is_strictly_better():
    # one lesion and a false positive too large for every small size: only the largest rule removes it
    # without removing the lesion (a size of 200 removes both)
    cases = [false_positive_case(3), false_positive_case(4)]          # 27 and 64 false voxels
    scores = rule_scores(cases, [0, 5, 200])
    assert scores[LARGEST] == pytest.approx(1.0) and max(scores[s] for s in (0, 5, 200)) < 1.0
    table, rule, size = postprocess_table(cases, [0, 5, 200])
    assert (rule, size) == (LARGEST, 0) and table.loc[table["chosen"], "rule"].tolist() == [LARGEST]
    # two true lesions (multifocal) and a small false positive: a size keeps both lesions, the largest
    # rule loses one, so a size is chosen
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[15:19, 15:19, 15:19] = 1
    pred = truth.copy()
    pred[25, 25, :3] = 1
    table, rule, size = postprocess_table([(pred, truth)], [0, 5, 200])
    assert (rule, size) == ("min_size", 5)
    assert table.set_index("rule").loc[LARGEST, "mean_dice"] == pytest.approx(2 * 64 / (64 + 128))
    # equal scores: the gentlest rule, the smallest size
    exact = false_positive_case(0)
    assert postprocess_table([exact], [5, 0])[1:] == ("min_size", 0)
    # an empty prediction: the largest rule scores as the empty mask does (both empty: 1)
    empty = np.zeros((4, 4, 4), np.uint8)
    assert rule_scores([(empty, empty)], [0]) == {0: 1.0, LARGEST: 1.0}


def test_fusion_settings_carry_the_largest_component_rule(tmp_path):
    probabilities = {"axial": np.zeros((8, 8, 8), np.float32)}
    probabilities["axial"][1:3, 1:3, 1:3] = 0.9       # 8 voxels
    probabilities["axial"][6, 6, 5:7] = 0.9            # 2 voxels
    assert fused_mask(probabilities).sum() == 10
    largest = FusionSettings(largest_component=True)
    assert fused_mask(probabilities, largest).sum() == 8 and "largest lesion only" in largest.describe()
    path = tmp_path / "fusion.json"
    path.write_text(largest.to_json(model="unet"))
    assert json.loads(path.read_text())["largest_component"] is True
    assert FusionSettings.from_json(path) == largest
    path.write_text(json.dumps({"fusion": "mean", "min_lesion_voxels": 5}))   # written before the rule existed
    assert FusionSettings.from_json(path).largest_component is False
    with pytest.raises(ConfigError, match="largest_component"):
        FusionSettings(largest_component="yes")
    path.write_text(json.dumps({"largest_component": 1}))
    with pytest.raises(InputError, match="largest_component"):
        FusionSettings.from_json(path)

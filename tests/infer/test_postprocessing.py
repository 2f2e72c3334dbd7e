"""Component removal and the choice of the minimum component size on hand-made volumes."""
import numpy as np
import pytest

from strokeseg.infer.postprocessing import (
    choose_min_component_size,
    component_size_scores,
    min_size_table,
    remove_small_components,
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


def test_min_size_table_streams_the_cases_once_and_agrees_with_the_choice():
    blob = (slice(5, 10), slice(5, 10), slice(5, 10))
    cases = [case(blob, [3, 4]), case(blob, [2], probability=True), case(blob, [])]
    consumed = []

    def stream():
        for item in cases:
            consumed.append(1)
            yield item

    table, chosen = min_size_table(stream(), [6, 200, 5, 0, 3])
    assert len(consumed) == 3 and chosen == choose_min_component_size(cases, [6, 200, 5, 0, 3]) == 5
    assert list(table["min_lesion_voxels"]) == [6, 200, 5, 0, 3] and set(table["n_subjects"]) == {3}
    assert table.loc[table["chosen"], "min_lesion_voxels"].tolist() == [5]
    scores = component_size_scores(cases, [6, 200, 5, 0, 3])
    assert table.set_index("min_lesion_voxels")["mean_dice"].to_dict() == scores

"""The foreground-weighted sampler: exact weights, the pool plan and its padding, and draws in
proportion to the weights that depend on (seed, epoch) alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strokeseg.errors import StrokesegError
from strokeseg.protocol.weighted_sampling import epoch_draw, pool_plan, slice_weights

# Subject a: areas 30, 10, 0 (total 40, floor 0.1 * 40 / 3 = 4/3, denominator 1.1 * 40 = 44);
# subject b: areas 0, 20 (total 20, floor 1, denominator 22); subject c is lesion-free: 1/2 each.
LESIONS = pd.DataFrame({"subject_name": ["b", "a", "a"], "slice": [6, 1, 2], "sum_voxel": [20, 30, 10],
                        "slice_bin": [1, 1, 0]})
NORMALS = pd.DataFrame({"subject_name": ["c", "a", "b", "c"], "slice": [2, 3, 5, 1]})
# In (subject_name, slice) order: a1, a2, a3, b5, b6, c1, c2; each subject's weights / 3 subjects.
EXPECTED = np.array([94 / 132, 34 / 132, 4 / 132, 1 / 22, 21 / 22, 1 / 2, 1 / 2]) / 3


def test_weights_are_the_hand_computed_ones_and_a_lesion_free_subject_is_uniform():
    plan, _ = pool_plan(LESIONS, NORMALS, n_bins=2, batch_size=3, floor=0.1)
    pool = plan[plan["repeat"] == 0]
    assert list(zip(pool["subject_name"], pool["slice"])) == [("a", 1), ("a", 2), ("a", 3), ("b", 5), ("b", 6),
                                                              ("c", 1), ("c", 2)]
    np.testing.assert_allclose(pool["weight"], EXPECTED, rtol=1e-12)
    np.testing.assert_allclose(pool.groupby("subject_name")["weight"].sum(), [1 / 3] * 3, rtol=1e-12)
    assert list(pool["kind"]) == ["lesion", "lesion", "normal", "normal", "lesion", "normal", "normal"]
    assert list(pool["slice_bin"]) == [1, 0, -1, -1, 1, -1, -1]
    # upstream's formula without the fix would give subject c weight 0 (0 / 0): here 1/n per slice
    np.testing.assert_allclose(slice_weights(["c", "c", "c", "c"], [0, 0, 0, 0], 0.1), [0.25] * 4)


def test_the_pool_is_dealt_into_whole_batches_padded_with_weight_zero_repeats():
    plan, usage = pool_plan(LESIONS, NORMALS, n_bins=2, batch_size=3, floor=0.1)
    assert len(plan) == 9 and list(plan["batch"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert list(plan["position"]) == [0, 1, 2] * 3
    padding = plan.iloc[7:]
    assert list(padding["repeat"]) == [1, 1] and list(padding["weight"]) == [0.0, 0.0]
    assert list(zip(padding["subject_name"], padding["slice"])) == [("a", 1), ("a", 2)]
    assert plan["weight"].sum() == pytest.approx(1.0)
    by_bin = usage.set_index("bin")
    assert list(by_bin.loc[[0, 1, -1], "available"]) == [1, 2, 4]
    assert list(by_bin.loc[[0, 1, -1], "padded"]) == [1, 1, 0]
    assert by_bin["weight"].sum() == pytest.approx(1.0)
    assert by_bin.loc[0, "expected_per_batch"] == pytest.approx(3 * EXPECTED[1])


def test_draws_follow_the_weights_and_reach_the_lesion_free_subject():
    plan, _ = pool_plan(LESIONS, NORMALS, n_bins=2, batch_size=3, floor=0.1)
    weights = plan["weight"].to_numpy()
    slots = epoch_draw(weights, n_batches=20000, batch_size=3, epoch=0, seed=11)
    assert slots.shape == (20000, 3)
    frequency = np.bincount(slots.ravel(), minlength=len(plan)) / slots.size
    # 60 000 draws: a share's standard error is at most 0.002, so 0.01 is five of them
    np.testing.assert_allclose(frequency[:7], EXPECTED, atol=0.01)
    assert frequency[7:].sum() == 0                          # padding (weight 0) is never drawn
    assert frequency[5:7].sum() == pytest.approx(1 / 3, abs=0.01)


def test_a_draw_depends_on_seed_and_epoch_only():
    weights = np.tile([0.5, 0.25, 0.25, 0.0], 3)             # several parts' weights: normalised over all
    first = epoch_draw(weights, 4, 5, epoch=3, seed=7)
    np.testing.assert_array_equal(first, epoch_draw(weights, 4, 5, epoch=3, seed=7))
    assert not np.array_equal(first, epoch_draw(weights, 4, 5, epoch=4, seed=7))
    assert not np.array_equal(first, epoch_draw(weights, 4, 5, epoch=3, seed=8))
    assert not np.isin(first, [3, 7, 11]).any()


def test_bad_inputs_are_refused():
    with pytest.raises(StrokesegError, match="floor"):
        slice_weights(["a"], [1], 0.0)
    with pytest.raises(StrokesegError, match="not all zero"):
        epoch_draw([0.0, 0.0], 1, 1, 0, 0)
    with pytest.raises(StrokesegError, match="both"):
        pool_plan(LESIONS, NORMALS.assign(slice=[2, 1, 5, 1]), 2, 3, 0.1)   # (a, 1) lesion and normal
    with pytest.raises(StrokesegError, match="no slices"):
        pool_plan(LESIONS.iloc[:0], NORMALS.iloc[:0], 2, 3, 0.1)


def test_every_slice_draws_each_slice_once_per_epoch_in_a_fresh_order():
    lesions = pd.DataFrame({"subject_name": ["a", "b"], "slice": [1, 0], "sum_voxel": [5, 9], "slice_bin": [0, 1]})
    normals = pd.DataFrame({"subject_name": ["a", "a", "b"], "slice": [0, 2, 1]})
    plan, _ = pool_plan(lesions, normals, n_bins=2, batch_size=4, floor=None)
    weights = plan["weight"].to_numpy()
    assert np.allclose(weights[:5], 1 / 5) and (weights[5:] == 0).all()     # 5 slices, 3 padding slots
    first = epoch_draw(weights, 2, 4, epoch=0, seed=7, replace=False)
    assert sorted(first.ravel()[:5]) == [0, 1, 2, 3, 4]                       # every slice once, no padding
    assert set(first.ravel()[5:]) <= {0, 1, 2, 3, 4}                          # the rest from the next order
    np.testing.assert_array_equal(first, epoch_draw(weights, 2, 4, epoch=0, seed=7, replace=False))
    orders = {tuple(epoch_draw(weights, 2, 4, epoch=e, seed=7, replace=False).ravel()[:5]) for e in range(6)}
    assert len(orders) > 1                                                    # reshuffled per epoch

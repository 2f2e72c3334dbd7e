"""Tests for strokeseg.protocol.batches: slot allocation, batch composition, epoch order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from strokeseg.errors import StrokesegError
from strokeseg.protocol.batches import BATCH_COLUMNS, USAGE_COLUMNS, allocate_slots, compose_batches, epoch_batch_order

# -------------------------------------------------------------------------------------------------
# allocate_slots

@pytest.mark.parametrize("counts, slots, expected", [
    # quotas 8, 4.8, 2.4, 0.8: bin 3 (< 1) gets 1; 15 slots over [50, 30, 15] -> 7.89, 4.74, 2.37
    # -> floors 7, 4, 2 (13), the 2 spare slots go to remainders .89 and .74.
    ([50, 30, 15, 5], 16, [8, 5, 2, 1]),
    # upstream axial fold counts; bins 4, 5 (quotas .88, .65) get 1; 14 over the rest -> 7.41,
    # 2.47, 2.10, 2.03 -> 7, 2, 2, 2 plus one for the .47 remainder.
    ([2524, 840, 714, 690, 291, 215], 16, [7, 3, 2, 2, 1, 1]),
    # no bin below one slot: plain largest remainder (quotas 4.2, 3.2, 2.4, 6.2; +1 at .4)
    ([21, 16, 12, 31], 16, [4, 3, 3, 6]),
    # an empty bin gets nothing; a 1-slice bin still gets one slot
    ([10, 0, 1], 4, [3, 0, 1]),
    ([1000, 1], 16, [15, 1]),
    # tie on remainder (.5 and .5): the larger count wins, wherever it sits
    ([3, 7], 5, [1, 4]),
    ([7, 3], 5, [4, 1]),
    # full tie: lower bin index wins
    ([5, 5], 3, [2, 1]),
    # cascade: bin 2 gets 1, then bin 1's share over 9 slots (0.96) falls below 1 too
    ([100, 12, 1], 10, [8, 1, 1]),
    # exactly as many non-empty bins as slots
    ([1] * 16, 16, [1] * 16),
    ([5], 16, [16]),
])
def test_allocate_slots_hand_computed(counts, slots, expected):
    out = allocate_slots(counts, slots)
    assert out.tolist() == expected
    assert out.dtype == np.int64


def test_allocate_slots_random_invariants():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_bins = int(rng.integers(1, 9))
        counts = rng.integers(0, 3000, n_bins) * (rng.random(n_bins) < 0.8)
        counts[rng.integers(n_bins)] = max(1, counts.max())   # at least one non-empty bin
        slots = int(rng.integers(max(1, (counts > 0).sum()), 40))
        out = allocate_slots(counts, slots)
        assert out.sum() == slots
        assert (out[counts > 0] >= 1).all()
        assert (out[counts == 0] == 0).all()
        # bins that did not need the minimum are within one slot of their proportional share
        # among themselves (Hamilton property)
        big = (counts > 0) & (out > 1)
        if big.any():
            share = out[big].sum() * counts[big] / counts[big].sum()
            assert (np.abs(out[big] - share) < 1 + 1e-9).all()


def test_allocate_slots_matches_plain_hamilton_when_no_minimum_needed():
    counts = np.array([400, 300, 200, 100])     # quotas 6.4, 4.8, 3.2, 1.6
    assert allocate_slots(counts, 16).tolist() == [6, 5, 3, 2]


def test_allocate_slots_accepts_numpy_and_is_deterministic():
    counts = np.array([2524, 840, 714, 690, 291, 215], dtype=np.int32)
    assert allocate_slots(counts, 16).tolist() == allocate_slots(list(counts), 16).tolist()


@pytest.mark.parametrize("counts, slots, match", [
    ([1] * 17, 16, "17 non-empty bins"),
    ([0, 0, 0], 16, "empty"),
    ([3, -1], 16, "non-negative"),
    ([3, 1], 0, "at least 1"),
    ([], 16, "non-empty"),
    ([[1, 2]], 16, "1-D"),
    ([1.5, 2], 16, "integer"),
])
def test_allocate_slots_errors(counts, slots, match):
    with pytest.raises(StrokesegError, match=match):
        allocate_slots(counts, slots)


# -------------------------------------------------------------------------------------------------
# compose_batches: fixtures

def _lesions(spec):
    """spec: list of (bin, n_slices). Subjects s00.., slices numbered globally."""
    rows, i = [], 0
    for b, n in spec:
        for _ in range(n):
            rows.append({"subject_name": f"s{i % 7:02d}", "slice": i,
                         "sum_voxel": 100 * (b + 1) + i, "slice_bin": b})
            i += 1
    return pd.DataFrame(rows, columns=["subject_name", "slice", "sum_voxel", "slice_bin"])


def _normals(n, start=10_000):
    return pd.DataFrame({"subject_name": [f"s{i % 5:02d}" for i in range(n)],
                         "slice": np.arange(start, start + n)})


@pytest.fixture
def small():
    # bins [6, 3, 1, 0] with 4 lesion slots: quotas 2.4, 1.2, .4 -> bin 2 gets 1, then 3 slots over
    # [6, 3] -> 2, 1. k = [2, 1, 1, 0]; batches = max(ceil(6/2), ceil(3/1), ceil(1/1)) = 3.
    return _lesions([(0, 6), (1, 3), (2, 1)])


def _key(frame):
    return list(zip(frame["subject_name"], frame["slice"]))


# -------------------------------------------------------------------------------------------------
# compose_batches: structure and composition

def test_compose_structure_and_known_counts(small):
    batches, usage = compose_batches(small, _normals(4), n_bins=4, lesion_per_batch=4,
                                     normal_per_batch=2, seed=7)
    assert list(batches.columns) == list(BATCH_COLUMNS)
    assert list(usage.columns) == list(USAGE_COLUMNS)
    assert len(batches) == 3 * 6
    assert batches["batch"].tolist() == [b for b in (1, 2, 3) for _ in range(6)]
    assert batches["position"].tolist() == list(range(6)) * 3
    assert batches["kind"].tolist() == (["lesion"] * 4 + ["normal"] * 2) * 3

    # per-batch lesion composition equals the allocation, positions grouped by bin
    for _, grp in batches.groupby("batch"):
        les = grp[grp["kind"] == "lesion"]
        assert les["slice_bin"].tolist() == [0, 0, 1, 2]
        nor = grp[grp["kind"] == "normal"]
        assert len(nor) == 2
        assert (nor["slice_bin"] == -1).all() and (nor["sum_voxel"] == 0).all()

    lesion_usage = usage[usage["kind"] == "lesion"].set_index("bin")
    assert lesion_usage.index.tolist() == [0, 1, 2, 3]
    assert lesion_usage["available"].tolist() == [6, 3, 1, 0]
    assert lesion_usage["slots_per_batch"].tolist() == [2, 1, 1, 0]
    assert lesion_usage["uses"].tolist() == [6, 3, 3, 0]
    assert lesion_usage["used_unique"].tolist() == [6, 3, 1, 0]
    assert lesion_usage["repeated"].tolist() == [0, 0, 2, 0]
    assert (lesion_usage["unused"] == 0).all()
    assert (usage["n_batches"] == 3).all()

    normal = usage[usage["kind"] == "normal"].iloc[0]
    assert normal["bin"] == -1
    assert (normal["available"], normal["slots_per_batch"], normal["uses"],
            normal["used_unique"], normal["repeated"], normal["unused"]) == (4, 2, 6, 4, 2, 0)


def test_compose_lesion_columns_carried_through(small):
    batches, _ = compose_batches(small, _normals(4), 4, 4, 2, seed=1)
    les = batches[batches["kind"] == "lesion"]
    ref = small.set_index(["subject_name", "slice"])
    looked = ref.loc[list(zip(les["subject_name"], les["slice"]))]
    assert looked["sum_voxel"].tolist() == les["sum_voxel"].tolist()
    assert looked["slice_bin"].tolist() == les["slice_bin"].tolist()


def test_every_lesion_slice_used_and_repeat_flags_match_usage(small):
    batches, usage = compose_batches(small, _normals(4), 4, 4, 2, seed=3)
    les = batches[batches["kind"] == "lesion"]
    assert set(_key(les)) == set(_key(small))
    for b, row in usage.set_index(["kind", "bin"]).iterrows():
        kind, bin_ = b
        rows = batches[(batches["kind"] == kind) & (batches["slice_bin"] == bin_)]
        assert len(rows) == row["uses"]
        assert int(rows["repeat"].sum()) == row["repeated"]
        first = rows[rows["repeat"] == 0]
        assert len(first) == row["used_unique"]
        assert len(set(_key(first))) == len(first)           # first uses are all distinct
        assert set(_key(rows)) == set(_key(first))           # repeats re-use first-pass slices


def test_realistic_counts_cover_rule():
    # upstream axial fold-1 counts: k = [7,3,2,2,1,1];
    # n = max(ceil(2524/7)=361, 280, 357, 345, 291, 215) = 361
    spec = list(enumerate([2524, 840, 714, 690, 291, 215]))
    lesions = _lesions(spec)
    batches, usage = compose_batches(lesions, _normals(6000), 6, 16, 16, seed=42)
    assert usage["n_batches"].iloc[0] == 361
    assert len(batches) == 361 * 32
    lu = usage[usage["kind"] == "lesion"]
    assert lu["slots_per_batch"].tolist() == [7, 3, 2, 2, 1, 1]
    assert (lu["unused"] == 0).all()
    les = batches[batches["kind"] == "lesion"]
    assert les.groupby("batch").size().eq(16).all()
    per_batch = les.groupby(["batch", "slice_bin"]).size().unstack()
    assert (per_batch.to_numpy() == np.array([7, 3, 2, 2, 1, 1])).all()
    assert set(_key(les)) == set(_key(lesions))
    # the bin that sets n is used exactly once per slice minus the last partial batch's fill-up
    assert lu.set_index("bin").loc[0, "repeated"] == 361 * 7 - 2524
    # normals: 361*16 = 5776 slots from 6000, no repeats, 224 reported unused
    nu = usage[usage["kind"] == "normal"].iloc[0]
    assert (nu["uses"], nu["repeated"], nu["unused"]) == (5776, 0, 224)
    nor = batches[batches["kind"] == "normal"]
    assert (nor["repeat"] == 0).all() and len(set(_key(nor))) == 5776


def test_no_slice_twice_in_one_batch_when_bin_is_large_enough():
    # k = [10, 2] (quotas 10.17, 1.83); n = 5; bin 1 (9 slices) is cycled once inside batch 5;
    # the 7 normals fill 5 x 4 slots, with pass boundaries inside batches 2 and 4.
    lesions = _lesions([(0, 50), (1, 9)])
    for seed in range(20):
        batches, usage = compose_batches(lesions, _normals(7), 2, 12, 4, seed=seed)
        assert usage.set_index("bin").loc[1, "slots_per_batch"] == 2
        assert usage["repeated"].tolist() == [0, 1, 13]
        for _, grp in batches.groupby("batch"):
            assert len(set(_key(grp))) == len(grp)


def test_deal_keeps_batches_free_of_duplicates_across_passes():
    from strokeseg.protocol.batches import _deal
    for seed in range(30):
        order, rep = _deal(3, 2, 10, np.random.default_rng(seed))
        assert rep.tolist() == [0] * 3 + [1] * 17
        batches = order.reshape(10, 2)
        assert (batches[:, 0] != batches[:, 1]).all()
        for start in range(0, 18, 3):                     # every pass is a permutation
            assert sorted(order[start:start + 3].tolist()) == [0, 1, 2]


def test_normal_pool_smaller_is_cycled_and_larger_reports_unused(small):
    _, usage = compose_batches(small, _normals(2), 4, 4, 3, seed=0)
    nu = usage[usage["kind"] == "normal"].iloc[0]
    assert (nu["available"], nu["uses"], nu["used_unique"], nu["repeated"], nu["unused"]) == \
        (2, 9, 2, 7, 0)
    batches, usage = compose_batches(small, _normals(10), 4, 4, 2, seed=0)
    nu = usage[usage["kind"] == "normal"].iloc[0]
    assert (nu["available"], nu["uses"], nu["used_unique"], nu["repeated"], nu["unused"]) == \
        (10, 6, 6, 0, 4)
    nor = batches[batches["kind"] == "normal"]
    assert len(set(_key(nor))) == 6 and (nor["repeat"] == 0).all()


def test_zero_normal_slots_allowed_without_normals(small):
    empty = pd.DataFrame({"subject_name": pd.Series([], dtype=object),
                          "slice": pd.Series([], dtype=int)})
    batches, usage = compose_batches(small, empty, 4, 4, 0, seed=0)
    assert (batches["kind"] == "lesion").all() and len(batches) == 12
    nu = usage[usage["kind"] == "normal"].iloc[0]
    assert (nu["available"], nu["uses"]) == (0, 0)


# -------------------------------------------------------------------------------------------------
# determinism

def test_determinism_and_row_order_independence(small):
    normals = _normals(5)
    a = compose_batches(small, normals, 4, 4, 2, seed=11)
    b = compose_batches(small, normals, 4, 4, 2, seed=11)
    shuffled_l = small.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled_n = normals.sample(frac=1.0, random_state=4)              # index left scrambled
    extra = shuffled_l.assign(note="ignored")[["note"] + list(shuffled_l.columns)]
    c = compose_batches(extra, shuffled_n, 4, 4, 2, seed=11)
    for x, y in ((a, b), (a, c)):
        pd.testing.assert_frame_equal(x[0], y[0])
        pd.testing.assert_frame_equal(x[1], y[1])


def test_different_seeds_give_different_batches():
    lesions = _lesions([(0, 40), (1, 12), (2, 4)])
    a, ua = compose_batches(lesions, _normals(30), 3, 8, 8, seed=1)
    b, ub = compose_batches(lesions, _normals(30), 3, 8, 8, seed=2)
    pd.testing.assert_frame_equal(ua, ub)                  # usage depends only on counts
    assert _key(a) != _key(b)
    assert set(_key(a[a["kind"] == "lesion"])) == set(_key(b[b["kind"] == "lesion"]))


# -------------------------------------------------------------------------------------------------
# errors

def test_no_normals_is_an_error(small):
    empty = _normals(0)
    with pytest.raises(StrokesegError, match="no normal slices"):
        compose_batches(small, empty, 4, 4, 2, seed=0)


def test_no_lesions_is_an_error():
    with pytest.raises(StrokesegError, match="no lesion slices"):
        compose_batches(_lesions([]), _normals(4), 4, 4, 2, seed=0)


def test_too_many_nonempty_bins_for_slots():
    lesions = _lesions([(b, 2) for b in range(5)])
    with pytest.raises(StrokesegError, match="5 non-empty bins"):
        compose_batches(lesions, _normals(4), 5, 4, 2, seed=0)


@pytest.mark.parametrize("mutate, match", [
    (lambda les, n: (les.drop(columns="slice_bin"), n), "lack column"),
    (lambda les, n: (les, n.drop(columns="slice")), "lack column"),
    (lambda les, n: (les.assign(slice_bin=les["slice_bin"].where(les.index != 0, 4)), n), "outside 0..3"),
    (lambda les, n: (les.assign(slice_bin=les["slice_bin"].where(les.index != 0, -1)), n), "outside 0..3"),
    (lambda les, n: (pd.concat([les, les.iloc[:1]]), n), "more than once"),
    (lambda les, n: (les, pd.concat([n, n.iloc[:1]])), "more than once"),
    (lambda les, n: (les, pd.concat([n, les[["subject_name", "slice"]].iloc[:1]])), "both as a lesion"),
    (lambda les, n: (les.assign(slice_bin=les["slice_bin"] + 0.5), n), "integers"),
])
def test_bad_inputs(small, mutate, match):
    lesions, normals = mutate(small, _normals(4))
    with pytest.raises(StrokesegError, match=match):
        compose_batches(lesions, normals, 4, 4, 2, seed=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_bins": 0}, "n_bins"),
    ({"lesion_per_batch": 0}, "lesion_per_batch"),
    ({"normal_per_batch": -1}, "normal_per_batch"),
    ({"seed": -3}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_parameters(small, kwargs, match):
    args = {"n_bins": 4, "lesion_per_batch": 4, "normal_per_batch": 2, "seed": 0} | kwargs
    with pytest.raises(StrokesegError, match=match):
        compose_batches(small, _normals(4), **args)


# -------------------------------------------------------------------------------------------------
# epoch_batch_order

def test_epoch_order_is_a_seeded_permutation_per_epoch():
    orders = [epoch_batch_order(50, e, seed=5, fixed_order=False) for e in range(4)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(50))
    assert len({tuple(o.tolist()) for o in orders}) == 4                # differs across epochs
    np.testing.assert_array_equal(orders[2], epoch_batch_order(50, 2, seed=5, fixed_order=False))
    assert not np.array_equal(orders[0], epoch_batch_order(50, 0, seed=6, fixed_order=False))
    assert not np.array_equal(orders[0], np.arange(50))


def test_epoch_order_fixed_and_edge_cases():
    for e in range(3):
        np.testing.assert_array_equal(epoch_batch_order(7, e, seed=5, fixed_order=True), np.arange(7))
    assert epoch_batch_order(0, 0, seed=0, fixed_order=False).tolist() == []
    assert epoch_batch_order(1, 9, seed=0, fixed_order=False).tolist() == [0]
    with pytest.raises(StrokesegError):
        epoch_batch_order(-1, 0, seed=0, fixed_order=False)
    with pytest.raises(StrokesegError):
        epoch_batch_order(5, -1, seed=0, fixed_order=False)

"""Subject-level hold-out, folds, inner validation and normal-slice selection."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from strokeseg.errors import StrokesegError
from strokeseg.protocol.splits import (
    half_up_quota,
    holdout_split,
    inner_validation_seed,
    inner_validation_subjects,
    merge_small_strata,
    select_normal_slices,
    stratified_subset,
    subject_folds,
)

ATLAS_BIN_SIZES = (319, 154, 64, 49, 44, 25)          # docs/upstream-raxnet.md §2.1
ATLAS_HOLDOUT = (64, 31, 13, 10, 9, 5)


def cohort(sizes=ATLAS_BIN_SIZES, shuffle_seed=0) -> pd.DataFrame:
    bins = np.repeat(np.arange(len(sizes)), sizes)
    names = [f"sub-r{i:04d}" for i in range(len(bins))]
    order = np.random.default_rng(shuffle_seed).permutation(len(bins))  # names not sorted by bin
    return pd.DataFrame({"subject_name": names, "volume_bin": bins[order],
                         "sum_voxel": np.arange(len(bins)) * 10.0})


def shuffled(frame: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


# stratified_subset ---------------------------------------------------------------------------------
def test_half_up_quota_matches_upstream_table_and_rounds_half_up():
    assert [half_up_quota(0.2, n) for n in ATLAS_BIN_SIZES] == list(ATLAS_HOLDOUT)
    assert half_up_quota(0.5, 3) == 2 and half_up_quota(0.5, 1) == 1    # banker's would give 2, 0
    assert half_up_quota(0.35, 10) == 4                                 # 0.35*10 == 3.4999… in floats
    assert half_up_quota(0.2, 0) == 0


def test_stratified_subset_reproduces_upstream_counts():
    df = cohort()
    chosen = stratified_subset(df.subject_name, df.volume_bin, 0.2, seed=42)
    assert len(chosen) == 132 and chosen == sorted(chosen) and len(set(chosen)) == 132
    per_bin = df.set_index("subject_name").loc[chosen, "volume_bin"].value_counts().sort_index()
    assert per_bin.tolist() == list(ATLAS_HOLDOUT)


def test_stratified_subset_is_seeded_and_order_independent():
    df = cohort()
    a = stratified_subset(df.subject_name, df.volume_bin, 0.2, seed=7)
    assert a == stratified_subset(df.subject_name, df.volume_bin, 0.2, seed=7)
    assert a != stratified_subset(df.subject_name, df.volume_bin, 0.2, seed=8)
    other = shuffled(df, 3)
    assert a == stratified_subset(other.subject_name, other.volume_bin, 0.2, seed=7)


def test_stratified_subset_tiny_cohorts_keep_one_on_each_side():
    # 0.2 * 2 rounds to 0: one subject is still selected
    assert len(stratified_subset(["a", "b"], [0, 0], 0.2, seed=0)) == 1
    # two singleton strata at 0.5 both round up to 1: one is put back
    assert len(stratified_subset(["a", "b"], [0, 1], 0.5, seed=0)) == 1
    assert len(stratified_subset(["a", "b", "c"], [0, 1, 2], 0.9, seed=0)) == 2
    assert stratified_subset(["a"], [0], 0.2, seed=0) == []
    assert stratified_subset([], [], 0.2, seed=0) == []


@pytest.mark.parametrize("call", [
    lambda: stratified_subset(["a", "b"], [0], 0.2, 0),
    lambda: stratified_subset(["a", "a"], [0, 0], 0.2, 0),
    lambda: stratified_subset(["a", "b"], [0, 0], 1.0, 0),
    lambda: stratified_subset(["a", "b"], [0, 0], 0.0, 0),
    lambda: stratified_subset(["a", "b"], [0, 0], 0.2, -1),
])
def test_stratified_subset_rejects_bad_input(call):
    with pytest.raises(StrokesegError):
        call()


# holdout_split -------------------------------------------------------------------------------------
def test_holdout_is_disjoint_covering_and_stratified():
    df = cohort()
    train, holdout = holdout_split(df, 0.2, seed=42)
    assert (len(train), len(holdout)) == (523, 132)
    assert set(train.subject_name).isdisjoint(holdout.subject_name)
    assert set(train.subject_name) | set(holdout.subject_name) == set(df.subject_name)
    assert holdout.volume_bin.value_counts().sort_index().tolist() == list(ATLAS_HOLDOUT)
    assert train.volume_bin.value_counts().sort_index().tolist() == [
        n - h for n, h in zip(ATLAS_BIN_SIZES, ATLAS_HOLDOUT)]
    for part in (train, holdout):
        assert part.subject_name.is_monotonic_increasing
        assert list(part.columns) == list(df.columns) and list(part.index) == list(range(len(part)))


def test_holdout_is_deterministic_and_order_independent():
    df = cohort()
    a_train, a_hold = holdout_split(df, 0.2, seed=5)
    b_train, b_hold = holdout_split(shuffled(df), 0.2, seed=5)
    pd.testing.assert_frame_equal(a_train, b_train)
    pd.testing.assert_frame_equal(a_hold, b_hold)
    assert set(holdout_split(df, 0.2, seed=6)[1].subject_name) != set(a_hold.subject_name)


def test_holdout_rejects_missing_columns_and_duplicates():
    with pytest.raises(StrokesegError, match="volume_bin"):
        holdout_split(pd.DataFrame({"subject_name": ["a", "b"]}), 0.2, 0)
    with pytest.raises(StrokesegError, match="more than once"):
        holdout_split(pd.DataFrame({"subject_name": ["a", "a"], "volume_bin": [0, 0]}), 0.2, 0)


# subject_folds -------------------------------------------------------------------------------------
def test_subject_folds_partition_subjects_evenly_and_stratified():
    train, _ = holdout_split(cohort(), 0.2, seed=42)
    folds = subject_folds(train, 5, seed=42)
    assert list(folds.columns) == ["subject_name", "volume_bin", "fold"]
    assert folds.subject_name.is_monotonic_increasing and folds.subject_name.is_unique
    assert set(folds.subject_name) == set(train.subject_name)
    assert set(folds.fold) == {1, 2, 3, 4, 5}
    sizes = folds.fold.value_counts()
    assert sizes.max() - sizes.min() <= 1
    per_bin = pd.crosstab(folds.volume_bin, folds.fold)
    assert ((per_bin.max(axis=1) - per_bin.min(axis=1)) <= 1).all()   # every bin spread evenly


def test_subject_folds_deterministic_order_independent_and_seeded():
    train, _ = holdout_split(cohort(), 0.2, seed=42)
    a = subject_folds(train, 5, seed=3)
    pd.testing.assert_frame_equal(a, subject_folds(shuffled(train, 9), 5, seed=3))
    assert not a.fold.equals(subject_folds(train, 5, seed=4).fold)


@pytest.mark.parametrize("sizes", [(10, 2, 1, 1, 1, 0), (3, 1, 1), (1, 1, 1, 1, 1), (7, 0, 0, 0, 0, 1)])
def test_subject_folds_tiny_strata_neither_crash_nor_warn(sizes):
    df = cohort(tuple(s for s in sizes if s))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = subject_folds(df, 5, seed=0)
    counts = folds.fold.value_counts()
    assert set(folds.fold) == {1, 2, 3, 4, 5}
    assert counts.max() - counts.min() <= 1
    assert folds.volume_bin.tolist() == df.sort_values("subject_name").volume_bin.tolist()


def test_subject_folds_fewer_subjects_than_folds_is_one_clear_error():
    with pytest.raises(StrokesegError, match="cannot make 5 folds from 4 subjects") as err:
        subject_folds(cohort((4,)), 5, seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(StrokesegError):
        subject_folds(cohort((10,)), 1, seed=0)


def test_merge_small_strata_pools_neighbours():
    def groups(sizes, k):
        return merge_small_strata(np.repeat(np.arange(len(sizes)), sizes), k).tolist()
    assert groups((10, 2, 1, 1, 1), 5) == [0] * 10 + [1] * 5
    assert groups((10, 10, 2), 5) == [0] * 10 + [1] * 12      # a short top bin joins the one below
    assert groups((1, 1, 1), 5) == [0, 0, 0]
    assert groups((5, 5), 5) == [0] * 5 + [1] * 5
    assert merge_small_strata([3, 0, 3, 0], 2).tolist() == [1, 0, 1, 0]


# inner validation ----------------------------------------------------------------------------------
def test_inner_validation_is_a_stratified_part_of_every_fold():
    train, _ = holdout_split(cohort(), 0.2, seed=42)
    folds = subject_folds(train, 5, seed=42)
    inner = inner_validation_subjects(folds, 0.15, seed=42)
    assert list(inner.columns) == ["fold", "subject_name"] and inner["subject_name"].is_unique
    for fold, members in folds.groupby("fold"):
        chosen = inner.loc[inner.fold == fold, "subject_name"].tolist()
        assert chosen and set(chosen) < set(members.subject_name)        # some held out, most kept
        got = members.set_index("subject_name").loc[chosen, "volume_bin"].value_counts()
        for b, n in members.volume_bin.value_counts().items():
            assert got.get(b, 0) == half_up_quota(0.15, n)
    pd.testing.assert_frame_equal(inner, inner_validation_subjects(shuffled(folds), 0.15, seed=42))
    assert not inner.equals(inner_validation_subjects(folds, 0.15, seed=43))
    assert inner_validation_seed(42, 1) != inner_validation_seed(42, 2)


def test_inner_validation_tiny_folds():
    tiny = pd.DataFrame({"subject_name": ["a", "b", "c"], "volume_bin": [0, 0, 1], "fold": [1, 1, 2]})
    inner = inner_validation_subjects(tiny, 0.15, seed=0)
    assert inner["fold"].tolist() == [1] and inner["subject_name"].iloc[0] in {"a", "b"}   # c kept for training
    with pytest.raises(StrokesegError, match="no fold has two subjects"):
        inner_validation_subjects(tiny.iloc[1:], 0.15, seed=0)


# select_normal_slices ------------------------------------------------------------------------------
def slice_table(spec: dict[str, tuple[int, set[int], set[int]]]) -> tuple[pd.DataFrame, pd.Series]:
    """spec: subject -> (n_slices, lesion slice indices, brainless slice indices)."""
    rows = []
    for subject, (n, lesion, brainless) in spec.items():
        for k in range(n):
            rows.append((subject, k, 50 if k in lesion else 0, 0 if k in brainless else 900))
    slices = pd.DataFrame(rows, columns=["subject_name", "slice", "lesion_pixels", "brain_pixels"])
    counts = pd.Series({s: len(v[1]) for s, v in spec.items()}, name="lesion_slices")
    return slices, counts


SPEC = {
    "sub-a": (20, {5, 6, 7, 8, 9}, {0, 1, 18, 19}),
    "sub-b": (20, {10, 11, 12}, {0, 19}),
    "sub-c": (20, {2, 3, 4, 5}, set(range(20)) - {2, 3, 4, 5, 10}),   # one candidate only: slice 10
}


def check_valid(picked: pd.DataFrame, slices: pd.DataFrame, min_brain: int = 100):
    assert list(picked.columns) == ["subject_name", "slice"]
    assert not picked.duplicated().any()
    assert picked.equals(picked.sort_values(["subject_name", "slice"]).reset_index(drop=True))
    joined = picked.merge(slices, on=["subject_name", "slice"], how="left", validate="one_to_one")
    assert (joined.lesion_pixels == 0).all() and (joined.brain_pixels >= min_brain).all()


def test_normal_slices_one_to_one_per_subject_when_possible():
    spec = {k: v for k, v in SPEC.items() if k != "sub-c"}
    slices, counts = slice_table(spec)
    picked = select_normal_slices(slices, counts, 1.0, 100, seed=0)
    check_valid(picked, slices)
    assert picked.subject_name.value_counts().to_dict() == {"sub-a": 5, "sub-b": 3}


def test_normal_slices_shortfall_made_up_from_the_same_fold():
    slices, counts = slice_table(SPEC)
    picked = select_normal_slices(slices, counts, 1.0, 100, seed=0)
    check_valid(picked, slices)
    per = picked.subject_name.value_counts()
    assert len(picked) == counts.sum() == 12
    assert per["sub-c"] == 1 and picked[picked.subject_name == "sub-c"].slice.tolist() == [10]
    assert per["sub-a"] >= 5 and per["sub-b"] >= 3 and per["sub-a"] + per["sub-b"] == 11
    # a subject known only from lesion_counts (no slice rows) is made up from the others as well
    extra = pd.concat([counts, pd.Series({"sub-z": 2})])
    assert len(select_normal_slices(slices, extra, 1.0, 100, seed=0)) == 14


def test_normal_slices_deterministic_order_independent_and_seeded():
    slices, counts = slice_table(SPEC)
    a = select_normal_slices(slices, counts, 1.0, 100, seed=11)
    pd.testing.assert_frame_equal(a, select_normal_slices(shuffled(slices, 4), counts.iloc[::-1],
                                                          1.0, 100, seed=11))
    assert not a.equals(select_normal_slices(slices, counts, 1.0, 100, seed=12))


def test_normal_slices_ratio_and_too_few_candidates(caplog):
    slices, counts = slice_table(SPEC)
    half = select_normal_slices(slices, counts, 0.5, 100, seed=0)     # quotas 3 (2.5 up), 2, 2
    check_valid(half, slices)
    assert len(half) == 7 and half.subject_name.value_counts()["sub-a"] >= 3
    assert select_normal_slices(slices, counts, 0.0, 100, seed=0).empty
    n_candidates = int(((slices.lesion_pixels == 0) & (slices.brain_pixels >= 100)).sum())
    with caplog.at_level(logging.WARNING, logger="strokeseg.protocol.splits"):
        everything = select_normal_slices(slices, counts * 10, 1.0, 100, seed=0)
    assert len(everything) == n_candidates and "only" in caplog.text
    check_valid(everything, slices)
    # a brain threshold above every slice leaves nothing to pick
    assert select_normal_slices(slices, counts, 1.0, 10_000, seed=0).empty


def test_normal_slices_reject_bad_input():
    slices, counts = slice_table(SPEC)
    with pytest.raises(StrokesegError, match="brain_pixels"):
        select_normal_slices(slices.drop(columns="brain_pixels"), counts, 1.0, 100, 0)
    with pytest.raises(StrokesegError, match="more than once"):
        select_normal_slices(pd.concat([slices, slices.iloc[:1]]), counts, 1.0, 100, 0)
    with pytest.raises(StrokesegError, match="ratio"):
        select_normal_slices(slices, counts, -1.0, 100, 0)


def test_fold_parts_never_let_the_test_fold_fit_or_select():
    from strokeseg.protocol.splits import fold_parts

    roles = fold_parts(3, 5)
    assert roles["test"] == [(3, "train"), (3, "inner_val")]
    assert [f for f, _ in roles["train"]] == [1, 2, 4, 5] == [f for f, _ in roles["inner_val"]]
    assert {p for _, p in roles["train"]} == {"train"} and {p for _, p in roles["inner_val"]} == {"inner_val"}
    with pytest.raises(StrokesegError, match="outside"):
        fold_parts(6, 5)


def test_sessions_of_one_patient_stay_on_one_side_of_every_split():
    from strokeseg.protocol.splits import holdout_split, inner_validation_subjects, subject_folds

    names = [f"sub-{i:02d}" for i in range(12)] + ["sub-00_ses-2", "sub-05_ses-2", "sub-07_ses-2"]
    subjects = pd.DataFrame({"subject_name": names, "group": [n[:6] for n in names],
                             "volume_bin": [i % 3 for i in range(len(names))]})
    for seed in range(5):
        train, held = holdout_split(subjects, 0.25, seed)
        assert not set(train["group"]) & set(held["group"])
        folds = subject_folds(train, 3, seed)
        assert (folds.groupby("group")["fold"].nunique() == 1).all()
        inner = inner_validation_subjects(folds, 0.5, seed).merge(folds[["subject_name", "group"]])
        chosen = set(inner["group"])
        assert all(set(folds.loc[folds["group"] == g, "subject_name"]) <= set(inner["subject_name"]) for g in chosen)

"""Fold-balance tests on hand-made folds with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, mannwhitneyu

from strokeseg.errors import StrokesegError
from strokeseg.protocol.balance import COLUMNS, TESTS, bin_table_test, fold_balance_tests
from strokeseg.protocol.bins import assign_bins

EDGES = (0, 200, 500, 1_000, 2_000, 3_000, np.inf)      # axial slice edges, right-closed


def frame(per_fold: dict[int, np.ndarray]) -> pd.DataFrame:
    parts = [pd.DataFrame({"fold": f, "sum_voxel": np.asarray(v, dtype=float)})
             for f, v in per_fold.items()]
    out = pd.concat(parts, ignore_index=True)
    out["bin"] = assign_bins(out.sum_voxel, EDGES)
    return out


def test_layout_and_sorting():
    values = frame({f: np.arange(1, 41) * 80 for f in (3, 1, 2)})
    out = fold_balance_tests(values, 6, "axial")
    assert list(out.columns) == list(COLUMNS)
    assert len(out) == 9 and set(out.level) == {"axial"}
    assert list(zip(out.fold, out.test)) == [(f, t) for f in (1, 2, 3) for t in sorted(TESTS)]
    assert not out.isna().any().any()
    rest = out[out.test.str.endswith("vs_rest")]
    assert (rest.n_fold == 40).all() and (rest.n_reference == 80).all()
    assert (out[out.test == "mannwhitney_fold_vs_pool"].n_reference == 120).all()


def test_identical_distributions_give_high_p():
    values = frame({f: np.arange(1, 61) * 70 for f in range(1, 6)})
    out = fold_balance_tests(values, 6, "3d")
    assert (out.p_value > 0.9).all()
    chi = out[out.test == "chi2_bins_fold_vs_rest"]
    assert np.allclose(chi.statistic, 0.0)


def test_fold_holding_the_large_values_is_flagged():
    rng = np.random.default_rng(0)
    small = {f: rng.uniform(10, 900, 60) for f in range(2, 6)}
    values = frame({1: rng.uniform(2_500, 6_000, 60), **small})
    out = fold_balance_tests(values, 6, "axial").set_index(["fold", "test"])
    assert out.loc[(1, "mannwhitney_fold_vs_rest"), "p_value"] < 0.05
    assert out.loc[(1, "chi2_bins_fold_vs_rest"), "p_value"] < 0.05
    # the upstream variant is present and compares the fold with the whole pool
    pooled = mannwhitneyu(values[values.fold == 1].sum_voxel, values.sum_voxel,
                          alternative="two-sided")
    assert out.loc[(1, "mannwhitney_fold_vs_pool"), "statistic"] == pytest.approx(pooled.statistic)
    assert out.loc[(1, "mannwhitney_fold_vs_pool"), "p_value"] == pytest.approx(pooled.pvalue)
    vs_rest = mannwhitneyu(values[values.fold == 1].sum_voxel, values[values.fold != 1].sum_voxel,
                           alternative="two-sided")
    assert out.loc[(1, "mannwhitney_fold_vs_rest"), "p_value"] == pytest.approx(vs_rest.pvalue)


def test_chi2_matches_scipy_on_a_hand_made_table():
    # bin counts: fold 1 = [5, 3, 0, 2], fold 2 = [10, 12, 0, 1]; bin 2 is empty in both rows
    bins = {1: [0] * 5 + [1] * 3 + [3] * 2, 2: [0] * 10 + [1] * 12 + [3] * 1}
    values = pd.DataFrame([(f, 100.0 * (b + 1) + i, b) for f, bs in bins.items()
                           for i, b in enumerate(bs)], columns=["fold", "sum_voxel", "bin"])
    out = fold_balance_tests(values, 4, "sagittal").set_index(["fold", "test"])
    expected = chi2_contingency(np.array([[5, 3, 2], [10, 12, 1]]))
    got = out.loc[(1, "chi2_bins_fold_vs_rest")]
    assert got.statistic == pytest.approx(expected.statistic)
    assert got.p_value == pytest.approx(expected.pvalue)
    assert (got.n_fold, got.n_reference) == (10, 23)


def test_chi2_degenerate_table_is_p_one():
    assert bin_table_test([2, 2, 2], [2, 2], 6) == (0.0, 1.0)
    values = pd.DataFrame({"fold": [1, 1, 2, 2], "sum_voxel": [10.0, 20, 30, 40], "bin": 0})
    chi = fold_balance_tests(values, 6, "3d").query("test == 'chi2_bins_fold_vs_rest'")
    assert (chi.p_value == 1.0).all() and (chi.statistic == 0.0).all()


def test_bad_input_raises():
    values = frame({1: [100.0, 300.0], 2: [150.0, 2500.0]})
    with pytest.raises(StrokesegError, match=r"fold\(s\) \[3\] have no items"):
        fold_balance_tests(values, 6, "axial", folds=[1, 2, 3])
    with pytest.raises(StrokesegError, match="at least 2 folds"):
        fold_balance_tests(values[values.fold == 1], 6, "axial")
    with pytest.raises(StrokesegError, match="bin"):
        fold_balance_tests(values.assign(bin=7), 6, "axial")
    with pytest.raises(StrokesegError, match="sum_voxel"):
        fold_balance_tests(values.assign(sum_voxel=np.nan), 6, "axial")
    with pytest.raises(StrokesegError, match="column"):
        fold_balance_tests(values.drop(columns="bin"), 6, "axial")


def clustered_slices(n_subjects=40, slices_per_subject=30, seed=0):
    """Each subject has its own lesion scale; its slices cluster around it (as real slices do)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        scale = rng.lognormal(7, 1.2)
        for _ in range(slices_per_subject):
            rows.append((f"s{s:03d}", 1 + s % 5, scale * rng.lognormal(0, 0.2)))
    frame = pd.DataFrame(rows, columns=["subject_name", "fold", "sum_voxel"])
    frame["bin"] = np.digitize(frame["sum_voxel"], [500, 1500, 4000])
    return frame


def test_subject_permutation_p_values_account_for_clustered_slices():
    frame = clustered_slices()
    out = fold_balance_tests(frame, 4, "axial", groups="subject_name", n_permutations=499, seed=1)
    assert out["p_value_subject_permutation"].between(1 / 500, 1).all()
    # Random subject-level folds: the naive slice-level tests reject often, the permutation p-values
    # (which know slices come in subjects) mostly do not.
    naive = out.loc[out.test != "mannwhitney_fold_vs_pool", "p_value"]
    permuted = out.loc[out.test != "mannwhitney_fold_vs_pool", "p_value_subject_permutation"]
    assert (naive < 0.05).sum() > (permuted < 0.05).sum()
    assert (permuted >= 0.05).mean() >= 0.8
    again = fold_balance_tests(frame, 4, "axial", groups="subject_name", n_permutations=499, seed=1)
    pd.testing.assert_frame_equal(out, again)


def test_subject_permutation_detects_a_fold_of_large_lesions():
    frame = clustered_slices()
    big = frame["subject_name"].isin([f"s{s:03d}" for s in range(0, 40, 5)])   # fold 1's subjects
    frame.loc[big, "sum_voxel"] *= 50
    frame["bin"] = np.digitize(frame["sum_voxel"], [500, 1500, 4000])
    out = fold_balance_tests(frame, 4, "axial", groups="subject_name", n_permutations=499, seed=2)
    fold1 = out[(out.fold == 1) & (out.test == "mannwhitney_fold_vs_rest")]
    assert fold1["p_value_subject_permutation"].iloc[0] < 0.01


def test_subject_permutation_refuses_a_subject_split_over_folds():
    frame = clustered_slices(n_subjects=10)
    frame.loc[0, "fold"] = 2 if frame.loc[0, "fold"] != 2 else 3
    with pytest.raises(StrokesegError, match="several folds"):
        fold_balance_tests(frame, 4, "axial", groups="subject_name", n_permutations=9)

"""Are the folds balanced? Per-fold tests of the lesion-size distribution.

Upstream (reference/upstream-raxnet.md §4.2) compared each fold with the whole pool, the fold
included, by a Mann–Whitney U test. That test is weak (the fold is part of its reference), so it is
kept only as ``mannwhitney_fold_vs_pool`` for comparison; the meaningful tests are fold versus the
rest: a two-sided Mann–Whitney U on ``sum_voxel`` and a χ² test on the size-bin counts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, mannwhitneyu

from strokeseg.bins import bin_counts
from strokeseg.errors import StrokesegError

__all__ = ["fold_balance_tests", "bin_table_test", "TESTS", "COLUMNS"]

TESTS = ("chi2_bins_fold_vs_rest", "mannwhitney_fold_vs_pool", "mannwhitney_fold_vs_rest")
COLUMNS = ("level", "fold", "test", "statistic", "p_value", "n_fold", "n_reference")


def bin_table_test(fold_bins, rest_bins, n_bins: int) -> tuple[float, float]:
    """χ² test (``scipy.stats.chi2_contingency``, its defaults) of a 2×n_bins table of bin counts.

    Bins empty in both rows are dropped. A table left with one column (or none) has nothing to
    compare: statistic 0.0, p 1.0. With two columns scipy applies Yates' continuity correction
    (its default for one degree of freedom).
    """
    table = np.vstack([bin_counts(fold_bins, n_bins), bin_counts(rest_bins, n_bins)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] <= 1:
        return 0.0, 1.0
    result = chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


def fold_balance_tests(values: pd.DataFrame, n_bins: int, level: str,
                       folds: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per (fold, test): level, fold, test, statistic, p_value, n_fold, n_reference.

    ``values`` has one row per item (a lesion slice of one plane, or a subject for the 3-D level)
    with columns fold, sum_voxel and bin (0..n_bins-1). Tests, for each fold:

    * ``mannwhitney_fold_vs_rest``: two-sided Mann–Whitney U, fold vs the other folds' items;
    * ``mannwhitney_fold_vs_pool``: upstream's variant, fold vs every item (fold included);
    * ``chi2_bins_fold_vs_rest``: χ² on the fold-vs-rest bin counts (``bin_table_test``).

    ``n_reference`` is the size of the comparison sample (rest, or pool). ``folds`` names the folds
    expected (default: those present); a fold without items, fewer than two folds, a missing
    column, a NaN sum_voxel or a bin outside 0..n_bins-1 raise StrokesegError, so every p-value
    in the output is a number. Sorted by (fold, test).
    """
    missing = [c for c in ("fold", "sum_voxel", "bin") if c not in values.columns]
    if missing:
        raise StrokesegError(f"fold balance ({level}): values lack column(s) {', '.join(missing)}")
    if int(n_bins) < 1:
        raise StrokesegError(f"fold balance ({level}): n_bins must be >= 1, got {n_bins!r}")
    sizes = pd.to_numeric(values["sum_voxel"]).to_numpy(dtype=float)
    fold_of = values["fold"].to_numpy()
    if np.isnan(sizes).any():
        raise StrokesegError(f"fold balance ({level}): sum_voxel has missing values")
    bins = pd.to_numeric(values["bin"], errors="coerce").to_numpy(dtype=float)
    if len(bins) and (np.isnan(bins).any() or (bins != np.round(bins)).any()
                      or bins.min() < 0 or bins.max() >= n_bins):
        raise StrokesegError(f"fold balance ({level}): bin must be integers in 0..{n_bins - 1}")
    bins = bins.astype(int)
    present = sorted(set(fold_of.tolist()))
    expected = sorted(set(folds)) if folds is not None else present
    empty = [f for f in expected if f not in present]
    if empty:
        raise StrokesegError(f"fold balance ({level}): fold(s) {empty} have no items")
    unexpected = [f for f in present if f not in expected]
    if unexpected:
        raise StrokesegError(f"fold balance ({level}): items in unexpected fold(s) {unexpected}")
    if len(expected) < 2:
        raise StrokesegError(f"fold balance ({level}): need at least 2 folds, got {len(expected)}")

    rows = []
    for fold in expected:
        inside = fold_of == fold
        here, rest = sizes[inside], sizes[~inside]
        stat, p = bin_table_test(bins[inside], bins[~inside], n_bins)
        rows.append((level, fold, "chi2_bins_fold_vs_rest", stat, p, len(here), len(rest)))
        pool = mannwhitneyu(here, sizes, alternative="two-sided")
        rows.append((level, fold, "mannwhitney_fold_vs_pool", float(pool.statistic),
                     float(pool.pvalue), len(here), len(sizes)))
        vs_rest = mannwhitneyu(here, rest, alternative="two-sided")
        rows.append((level, fold, "mannwhitney_fold_vs_rest", float(vs_rest.statistic),
                     float(vs_rest.pvalue), len(here), len(rest)))
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    return out.sort_values(["fold", "test"], kind="mergesort").reset_index(drop=True)

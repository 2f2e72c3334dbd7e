"""Are the folds balanced? Per-fold tests of the lesion-size distribution.

Upstream (docs/upstream-raxnet.md §4.2) compared each fold with the whole pool, the fold
included, by a Mann–Whitney U test. That test is weak (the fold is part of its reference), so it is
kept only as ``mannwhitney_fold_vs_pool`` for comparison; the meaningful tests are fold versus the
rest: a two-sided Mann–Whitney U on ``sum_voxel`` and a χ² test on the size-bin counts.

Their textbook p-values assume independent items. Lesion slices are not: a fold holds whole
subjects, and the slices of one subject share its lesion, so on thousands of slices those p-values
flag the ordinary between-subject variation of any subject-level split. With ``groups`` (the
subject of each item) every test also gets ``p_value_subject_permutation``: the share of random
subject-level fold assignments (fold labels permuted among subjects, fold sizes kept) whose
statistic is at least as extreme as the observed one — the reference distribution that matches how
folds are actually drawn.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, mannwhitneyu, rankdata

from strokeseg.errors import StrokesegError
from strokeseg.protocol.bins import bin_counts

__all__ = ["fold_balance_tests", "bin_table_test", "TESTS", "COLUMNS", "PERMUTATION_COLUMN"]

TESTS = ("chi2_bins_fold_vs_rest", "mannwhitney_fold_vs_pool", "mannwhitney_fold_vs_rest")
COLUMNS = ("level", "fold", "test", "statistic", "p_value", "n_fold", "n_reference")
PERMUTATION_COLUMN = "p_value_subject_permutation"


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
                       folds: Sequence[int] | None = None, groups: str | None = None,
                       n_permutations: int = 999, seed: int = 0) -> pd.DataFrame:
    """One row per (fold, test): level, fold, test, statistic, p_value, n_fold, n_reference.

    ``values`` has one row per item (a lesion slice of one plane, or a subject for the 3-D level)
    with columns fold, sum_voxel and bin (0..n_bins-1). Tests, for each fold:

    * ``mannwhitney_fold_vs_rest``: two-sided Mann–Whitney U, fold vs the other folds' items;
    * ``mannwhitney_fold_vs_pool``: upstream's variant, fold vs every item (fold included);
    * ``chi2_bins_fold_vs_rest``: χ² on the fold-vs-rest bin counts (``bin_table_test``).

    ``n_reference`` is the size of the comparison sample (rest, or pool). ``folds`` names the folds
    expected (default: those present); a fold without items, fewer than two folds, a missing
    column, a NaN sum_voxel or a bin outside 0..n_bins-1 raise StrokesegError, so every p-value
    in the output is a number. Sorted by (fold, test). With ``groups`` (a column naming each
    item's subject; each subject must lie in one fold) the column ``p_value_subject_permutation``
    is added (see the module docstring; ``n_permutations`` draws seeded by ``seed``).
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
    if groups is not None:
        permuted = _subject_permutation_p_values(values[groups].to_numpy(), fold_of, sizes, bins, n_bins,
                                                 expected, n_permutations, seed, level)
        out[PERMUTATION_COLUMN] = [permuted[(f, t)] for f, t in zip(out["fold"], out["test"])]
    return out.sort_values(["fold", "test"], kind="mergesort").reset_index(drop=True)


def _subject_permutation_p_values(subjects, fold_of, sizes, bins, n_bins, folds, n_permutations,
                                  seed, level) -> dict[tuple[int, str], float]:
    """Permutation p-values of the three statistics under random subject-level fold assignment.

    Everything a statistic needs is a per-subject sum (slice count, sum of pooled ranks, bin
    counts), so a permuted fold's statistic is a sum over its subjects: all permutations are a few
    matrix products.
    """
    names, subject_index = np.unique(subjects, return_inverse=True)
    subject_fold = np.full(len(names), -1)
    subject_fold[subject_index] = fold_of
    if np.any(subject_fold[subject_index] != fold_of):
        raise StrokesegError(f"fold balance ({level}): a subject has items in several folds")
    ranks = rankdata(sizes)
    count = np.bincount(subject_index, minlength=len(names)).astype(float)
    rank_sum = np.bincount(subject_index, weights=ranks, minlength=len(names))
    per_bin = np.zeros((len(names), n_bins))
    np.add.at(per_bin, (subject_index, bins), 1.0)
    per_bin = per_bin[:, per_bin.sum(axis=0) > 0]

    rng = np.random.default_rng(seed)
    labels = np.vstack([subject_fold] + [rng.permutation(subject_fold) for _ in range(n_permutations)])
    total, total_bins = count.sum(), per_bin.sum(axis=0)
    p_values = {}
    for fold in folds:
        member = (labels == fold).astype(float)          # row 0: observed, then the permutations
        n1, r1, b1 = member @ count, member @ rank_sum, member @ per_bin
        statistics = {
            "mannwhitney_fold_vs_rest": _rank_z(r1 - n1 * (n1 + 1) / 2, n1, total - n1),
            "mannwhitney_fold_vs_pool": _rank_z(r1 - n1 / 2, n1, total),
            "chi2_bins_fold_vs_rest": _pearson_chi2(b1, total_bins - b1),
        }
        for test, statistic in statistics.items():
            extreme = np.count_nonzero(statistic[1:] >= statistic[0] * (1 - 1e-12))
            p_values[(fold, test)] = (1.0 + extreme) / (1.0 + n_permutations)
    return p_values


def _rank_z(u, n1, n2):
    """|U - E[U]| / sd(U) for two samples of sizes n1, n2 (no tie correction: it is only compared
    with itself across permutations)."""
    sd = np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
    return np.abs(u - n1 * n2 / 2.0) / np.where(sd > 0, sd, 1.0)


def _pearson_chi2(first, second):
    """Pearson χ² of 2×B tables given row by row (one table per permutation)."""
    table = np.stack([first, second], axis=1)               # (n, 2, B)
    totals = table.sum(axis=(1, 2))[:, None, None]
    expected = table.sum(axis=2, keepdims=True) * table.sum(axis=1, keepdims=True) / totals
    return np.sum(np.where(expected > 0, (table - expected) ** 2 / np.where(expected > 0, expected, 1), 0), axis=(1, 2))

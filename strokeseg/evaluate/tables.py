"""Result tables of stage 08 (training) and stage 09 (model comparison); pandas/NumPy/SciPy only.

Input is always a *long* frame, one row per evaluated item (a slice or a subject), so every table
here is recomputable from the per-item CSVs the stages write (with :func:`strokeseg.workdir.write_csv`).

Conventions:

- **Fold table** (:func:`folds_results_table`) follows upstream's ``{Plane}_folds_Results.csv``
  (``docs/upstream-raxnet.md`` §10.1): per fold, mean and pandas std (ddof 1,
  NaN when a fold has one item) over items; an ``All`` row whose mean is the *mean of the fold
  means* (every fold weighs the same, whatever its size) and whose std is ``np.std`` (ddof 0) of
  the fold means — the spread between folds, not between items. "Average score" is upstream's
  README (Dice + Recall + Precision) / 3 and the best fold is the one with the highest average
  score (first fold on ties).
- **NaN** metric values (e.g. HD95 with one empty mask, or a score the protocol leaves undefined)
  are ignored metric by metric: a mean/std/median uses the items where that metric exists. ``n``
  always counts rows (items evaluated), so it does not change from metric to metric.
- **Summary table** (:func:`summary_table`): per group, mean, std (ddof 1) and median over items,
  for per-plane, per-model tables of per-subject 3-D metrics.
- **Paired test** (:func:`paired_wilcoxon`): Wilcoxon signed-rank on per-subject differences
  ``model − reference`` (upstream compared models by mean ± std only, §10.2 and §9, which cannot
  say whether a gap of 0.005 Dice is more than noise). Pairs are matched by subject; a subject
  missing on either side, or with a NaN score on either side, is left out.
- Row orders are deterministic: evaluations, groups and models in order of first appearance,
  folds sorted, summary groups sorted.

The average score here is the same formula as :func:`strokeseg.train.metrics.average_score`, repeated
in one line because that module imports Keras and this one must not.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from strokeseg.evaluate.volume_metrics import average_score

FOLD_METRICS = ("dice", "recall", "precision")
FOLDS_COLUMNS = ("evaluation", "fold", "n", "dice_mean", "dice_std", "recall_mean", "recall_std",
                 "precision_mean", "precision_std", "average_score", "best_fold")
ALL_FOLDS = "All"
WILCOXON_COLUMNS = ("model", "reference", "metric", "n_pairs", "median_difference",
                    "mean_difference", "statistic", "p_value", "method")
# scipy's method="auto" uses the exact null distribution only up to 50 pairs and a deterministic
# (exhaustive, 2**n sign flips ≤ 9999 resamples) permutation test only up to 13; we make the same
# choice ourselves so that the ``method`` column can say which one was used.
_EXACT_MAX_PAIRS = 50
_PERMUTATION_MAX_PAIRS = 13


# --------------------------------------------------------------------------- input checks


def _check_frame(scores: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    if not isinstance(scores, pd.DataFrame):
        raise ValueError(f"{where}: expected a pandas DataFrame, got {type(scores).__name__}")
    missing = [c for c in columns if c not in scores.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing} (have {list(scores.columns)})")
    if scores.empty:
        raise ValueError(f"{where}: no rows")


def _numeric(scores: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    """The metric columns as float; NaN is allowed (ignored later), text or ±inf is an error."""
    out = {}
    for c in columns:
        try:
            values = pd.to_numeric(scores[c], errors="raise").astype(float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: column {c!r} is not numeric ({exc})") from None
        if np.isinf(values).any():
            raise ValueError(f"{where}: column {c!r} has infinite values")
        out[c] = values
    return pd.DataFrame(out, index=scores.index)


def _check_keys(scores: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Grouping keys must be present on every row: groupby would silently drop NaN keys."""
    for c in columns:
        if scores[c].isna().any():
            raise ValueError(f"{where}: column {c!r} has missing values")


def _fold_numbers(folds: pd.Series) -> pd.Series:
    """Fold labels as int; 3 and 3.0 are the same fold, 2.5 or "x" are errors."""
    try:
        values = pd.to_numeric(folds, errors="raise").astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"folds_results_table: column 'fold' is not numeric ({exc})") from None
    if values.isna().any() or not np.all(values == np.round(values)):
        raise ValueError("folds_results_table: column 'fold' must hold whole numbers")
    return values.astype(int)


def _ordered_unique(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


# --------------------------------------------------------------------------- stage 08: folds


def folds_results_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-fold and ``All`` rows of Dice/recall/precision for each evaluation (upstream §10.1).

    ``scores``: one row per evaluated item with ``evaluation`` (e.g. ``"slice_upstream"``,
    ``"lesion_slices"``, ``"subject_3d"``), ``fold`` (whole number), ``dice``, ``recall`` and
    ``precision``. Returns, for each evaluation in order of first appearance, one row per fold
    (sorted) then one ``All`` row, with columns :data:`FOLDS_COLUMNS`; ``fold`` is text ("1", …,
    "All") so the column has one type. Fold rows: ``n`` items, mean and std (ddof 1) over items.
    ``All``: ``n`` = all items, mean of the fold means and ``np.std`` (ddof 0) of the fold means,
    folds whose mean is NaN left out. ``best_fold`` marks the fold row with the highest
    ``average_score`` in its evaluation (the first on ties; none if every score is NaN).
    """
    where = "folds_results_table"
    _check_frame(scores, ("evaluation", "fold", *FOLD_METRICS), where)
    _check_keys(scores, ("evaluation",), where)
    frame = _numeric(scores, FOLD_METRICS, where)
    frame["evaluation"] = scores["evaluation"].astype(str)
    frame["fold"] = _fold_numbers(scores["fold"])

    rows = []
    for evaluation in _ordered_unique(frame["evaluation"]):
        items = frame[frame["evaluation"] == evaluation]
        fold_rows = [_fold_row(evaluation, fold, items[items["fold"] == fold])
                     for fold in sorted(items["fold"].unique())]
        _mark_best_fold(fold_rows)
        rows.extend(fold_rows)
        rows.append(_all_folds_row(evaluation, fold_rows))
    table = pd.DataFrame(rows, columns=list(FOLDS_COLUMNS))
    table["n"] = table["n"].astype(int)
    table["best_fold"] = table["best_fold"].astype(bool)
    return table


def _fold_row(evaluation: str, fold: int, items: pd.DataFrame) -> dict:
    row = {"evaluation": evaluation, "fold": str(fold), "n": len(items)}
    for m in FOLD_METRICS:
        # pandas skips NaN and gives NaN for the std of a single value (ddof 1), as upstream did.
        row[f"{m}_mean"] = float(items[m].mean())
        row[f"{m}_std"] = float(items[m].std(ddof=1))
    row["average_score"] = float(average_score(row["dice_mean"], row["recall_mean"],
                                                row["precision_mean"]))
    row["best_fold"] = False
    return row


def _all_folds_row(evaluation: str, fold_rows: list[dict]) -> dict:
    row = {"evaluation": evaluation, "fold": ALL_FOLDS, "n": sum(r["n"] for r in fold_rows)}
    for m in FOLD_METRICS:
        means = np.array([r[f"{m}_mean"] for r in fold_rows], dtype=float)
        means = means[~np.isnan(means)]
        # Upstream's "All": unweighted mean of fold means, np.std (ddof 0) between folds.
        row[f"{m}_mean"] = float(means.mean()) if means.size else np.nan
        row[f"{m}_std"] = float(means.std(ddof=0)) if means.size else np.nan
    row["average_score"] = float(average_score(row["dice_mean"], row["recall_mean"],
                                                row["precision_mean"]))
    row["best_fold"] = False
    return row


def _mark_best_fold(fold_rows: list[dict]) -> None:
    scores = np.array([r["average_score"] for r in fold_rows], dtype=float)
    if np.isnan(scores).all():
        return
    fold_rows[int(np.nanargmax(scores))]["best_fold"] = True  # nanargmax: first maximum on ties


# --------------------------------------------------------------------------- summaries


def summary_table(scores: pd.DataFrame, group_columns: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group (sorted by ``group_columns``): ``n`` and ``<m>_mean``, ``<m>_std``
    (ddof 1), ``<m>_median`` for each metric, NaN values ignored per metric.

    An empty ``group_columns`` gives a single row over all items.
    """
    where = "summary_table"
    group_columns, metrics = list(group_columns), list(metrics)
    if not metrics:
        raise ValueError(f"{where}: no metrics given")
    overlap = set(group_columns) & set(metrics)
    if overlap or len(set(metrics)) != len(metrics) or len(set(group_columns)) != len(group_columns):
        raise ValueError(f"{where}: group columns {group_columns} and metrics {metrics} must be "
                         "distinct names")
    _check_frame(scores, group_columns + metrics, where)
    _check_keys(scores, group_columns, where)
    frame = _numeric(scores, metrics, where)

    if group_columns:
        keys = [scores[c] for c in group_columns]
        grouped = frame.groupby(keys, sort=True)
        table = grouped.size().rename("n").to_frame()
    else:
        grouped = frame.groupby(np.zeros(len(frame), dtype=int))
        table = pd.DataFrame({"n": [len(frame)]})
    columns = {"n": table["n"].to_numpy()}
    for m in metrics:
        columns[f"{m}_mean"] = grouped[m].mean().to_numpy()
        columns[f"{m}_std"] = grouped[m].std(ddof=1).to_numpy()
        columns[f"{m}_median"] = grouped[m].median().to_numpy()
    out = pd.DataFrame(columns)
    if group_columns:
        out = pd.concat([table.index.to_frame(index=False), out], axis=1)
    out["n"] = out["n"].astype(int)
    return out


# --------------------------------------------------------------------------- stage 09: paired test


def paired_wilcoxon(scores: pd.DataFrame, reference: str, metric: str = "dice",
                    model_column: str = "model", subject_column: str = "subject_name",
                    group_columns: list[str] = ["plane"]) -> pd.DataFrame:  # noqa: B006 (not mutated)
    """Two-sided Wilcoxon signed-rank test of each model against ``reference``, per group.

    Within each group (e.g. plane) every model other than ``reference`` is paired with it by
    subject (inner join: a subject missing for either model, or whose ``metric`` is NaN on either
    side, is dropped); a subject listed twice for one model in one group is an error. The test
    is ``scipy.stats.wilcoxon(model − reference, zero_method="wilcox", alternative="two-sided")``:
    zero differences are dropped before ranking (Wilcoxon's original rule) and ``statistic`` is
    scipy's two-sided statistic, min(W+, W−). The p-value method is scipy's "auto" choice, made
    explicit and reported in ``method``: exact distribution for ≤ 50 pairs without ties or zeros,
    else an exhaustive permutation test for ≤ 13 pairs, else the normal approximation (scipy's
    default, without continuity correction).

    Edge cases: no pair → statistic and p NaN (method "no pairs"); every difference zero →
    statistic NaN, p 1.0 (method "all differences zero"), since the models agree on every
    subject. ``median_difference`` and ``mean_difference`` are over all pairs, zeros included.

    Rows: groups in order of first appearance, then models in order of first appearance; columns
    ``group_columns`` + :data:`WILCOXON_COLUMNS`.
    """
    where = "paired_wilcoxon"
    group_columns = list(group_columns)
    keys = group_columns + [model_column, subject_column]
    if len(set(keys + [metric])) != len(keys) + 1:
        raise ValueError(f"{where}: group, model, subject and metric columns must be distinct "
                         f"(got {keys + [metric]})")
    _check_frame(scores, keys + [metric], where)
    _check_keys(scores, keys, where)
    frame = scores[keys].copy()
    frame[metric] = _numeric(scores, [metric], where)[metric]
    duplicated = frame.duplicated(keys, keep=False)
    if duplicated.any():
        example = frame.loc[duplicated, keys].iloc[0].to_dict()
        raise ValueError(f"{where}: subject listed more than once for one model in one group, "
                         f"e.g. {example}")
    models = _ordered_unique(frame[model_column])
    if reference not in models:
        raise ValueError(f"{where}: reference model {reference!r} not in column {model_column!r} "
                         f"(models: {models})")

    rows = []
    for key, group in _groups_in_order(frame, group_columns):
        ref = group.loc[group[model_column] == reference, [subject_column, metric]]
        for model in [m for m in models if m != reference and (group[model_column] == m).any()]:
            other = group.loc[group[model_column] == model, [subject_column, metric]]
            pairs = other.merge(ref, on=subject_column, how="inner", suffixes=("_model", "_ref"))
            pairs = pairs.dropna(subset=[f"{metric}_model", f"{metric}_ref"])
            differences = (pairs[f"{metric}_model"] - pairs[f"{metric}_ref"]).to_numpy(float)
            rows.append({**dict(zip(group_columns, key)), "model": model, "reference": reference,
                         "metric": metric, **_signed_rank(differences)})
    return pd.DataFrame(rows, columns=group_columns + list(WILCOXON_COLUMNS)).astype(
        {"n_pairs": int})


def _groups_in_order(frame: pd.DataFrame, group_columns: list[str]):
    """(key tuple, rows) per group, in order of first appearance; one group if no columns."""
    if not group_columns:
        yield (), frame
        return
    for key, group in frame.groupby(group_columns, sort=False):
        yield (key if isinstance(key, tuple) else (key,)), group


def _signed_rank(differences: np.ndarray) -> dict:
    n = differences.size
    result = {"n_pairs": n,
              "median_difference": float(np.median(differences)) if n else np.nan,
              "mean_difference": float(np.mean(differences)) if n else np.nan}
    if n == 0:
        return {**result, "statistic": np.nan, "p_value": np.nan, "method": "no pairs"}
    if np.all(differences == 0):
        # scipy would divide by zero here; identical scores are no evidence of a difference.
        return {**result, "statistic": np.nan, "p_value": 1.0, "method": "all differences zero"}
    method, label = _wilcoxon_method(differences)
    test = stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided",
                          method=method)
    n_zero = int(np.count_nonzero(differences == 0))
    if n_zero:
        label += f", {n_zero} zero difference{'s' if n_zero > 1 else ''} dropped"
    return {**result, "statistic": float(test.statistic), "p_value": float(test.pvalue),
            "method": label}


def _wilcoxon_method(differences: np.ndarray):
    """scipy's method="auto" rule (scipy ≥ 1.15), as an explicit argument and a label."""
    n = differences.size
    nonzero = np.abs(differences[differences != 0])
    ties_or_zeros = nonzero.size < n or np.unique(nonzero).size < nonzero.size
    if n <= _EXACT_MAX_PAIRS and not ties_or_zeros:
        return "exact", "wilcoxon signed-rank (exact)"
    if n <= _PERMUTATION_MAX_PAIRS:
        return stats.PermutationMethod(), "wilcoxon signed-rank (exhaustive permutation; ties/zeros)"
    return "asymptotic", "wilcoxon signed-rank (normal approximation)"

"""Result tables of stages 08/09: hand-computed fold tables, summaries and paired Wilcoxon tests."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from strokeseg.evaluate import tables


def fold_scores() -> pd.DataFrame:
    """Evaluation "slice": fold 1 items dice 0.5, 0.7; fold 2 one item dice 0.9 (listed first)."""
    return pd.DataFrame({
        "evaluation": ["slice", "slice", "slice", "subject_3d", "subject_3d"],
        "fold": [2, 1, 1, 1, 1],
        "dice": [0.9, 0.5, 0.7, 0.2, 0.4],
        "recall": [0.6, 0.8, 1.0, 0.3, np.nan],
        "precision": [0.3, 0.6, 0.6, 0.5, 0.7],
    })


def paired(reference, **models) -> pd.DataFrame:
    """Long frame for one plane: ``models`` maps name → list of (subject, dice)."""
    rows = [dict(plane="axial", model=name, subject_name=s, dice=v)
            for name, items in {"rax": reference, **models}.items() for s, v in items]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- folds table


def test_folds_table_hand_computed():
    table = tables.folds_results_table(fold_scores())
    assert list(table.columns) == list(tables.FOLDS_COLUMNS)
    assert table["evaluation"].tolist() == ["slice"] * 3 + ["subject_3d"] * 2  # first appearance
    assert table["fold"].tolist() == ["1", "2", "All", "1", "All"]  # folds sorted, All last
    assert table["n"].tolist() == [2, 1, 3, 2, 2]

    f1, f2, all_ = (table.iloc[i] for i in range(3))
    assert f1["dice_mean"] == pytest.approx(0.6)
    assert f1["dice_std"] == pytest.approx(np.sqrt(0.02))  # ddof 1: ((0.1² + 0.1²) / 1) ** 0.5
    assert f1["recall_mean"] == pytest.approx(0.9)
    assert f1["precision_std"] == pytest.approx(0.0)
    assert f1["average_score"] == pytest.approx((0.6 + 0.9 + 0.6) / 3)
    assert f2["dice_mean"] == pytest.approx(0.9) and np.isnan(f2["dice_std"])  # n == 1
    assert f2["average_score"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)

    # All: mean of fold means (not of the 3 items: that would be 0.7) and ddof-0 std of them.
    assert all_["dice_mean"] == pytest.approx(0.75)
    assert all_["dice_std"] == pytest.approx(0.15)
    assert all_["recall_mean"] == pytest.approx(0.75) and all_["recall_std"] == pytest.approx(0.15)
    assert all_["precision_mean"] == pytest.approx(0.45)
    assert all_["precision_std"] == pytest.approx(0.15)
    assert all_["average_score"] == pytest.approx((0.75 + 0.75 + 0.45) / 3)

    # fold 1 (0.7) beats fold 2 (0.6); All is never the best fold.
    assert table["best_fold"].tolist() == [True, False, False, True, False]
    assert table["best_fold"].dtype == bool


def test_folds_table_ignores_nan_per_metric():
    table = tables.folds_results_table(fold_scores())
    sub = table[table["evaluation"] == "subject_3d"].iloc[0]
    assert sub["n"] == 2  # rows, whatever the metric
    assert sub["dice_mean"] == pytest.approx(0.3)
    assert sub["recall_mean"] == pytest.approx(0.3) and np.isnan(sub["recall_std"])  # one value
    assert sub["average_score"] == pytest.approx((0.3 + 0.3 + 0.6) / 3)


def test_folds_table_all_nan_metric_and_ties():
    scores = pd.DataFrame({"evaluation": "e", "fold": [1, 2, 3], "dice": [0.5, 0.5, np.nan],
                           "recall": [0.5, 0.5, np.nan], "precision": [0.5, 0.5, np.nan]})
    table = tables.folds_results_table(scores)
    assert table["best_fold"].tolist() == [True, False, False, False]  # first of the tie
    all_ = table.iloc[-1]
    assert all_["n"] == 3 and all_["dice_mean"] == pytest.approx(0.5) and all_["dice_std"] == 0.0
    nothing = tables.folds_results_table(scores.iloc[[2]])
    assert not nothing["best_fold"].any() and np.isnan(nothing["average_score"]).all()


def test_folds_table_accepts_whole_float_folds():
    scores = fold_scores().assign(fold=lambda f: f["fold"].astype(float))
    assert tables.folds_results_table(scores)["fold"].tolist()[:3] == ["1", "2", "All"]


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="recall"), r"missing columns \['recall'\]"),
    (lambda f: f.iloc[:0], "no rows"),
    (lambda f: f.assign(fold=[1.5, 1, 1, 1, 1]), "whole numbers"),
    (lambda f: f.assign(fold=["a", "1", "1", "1", "1"]), "'fold' is not numeric"),
    (lambda f: f.assign(dice=["x", 0.5, 0.7, 0.2, 0.4]), "'dice' is not numeric"),
    (lambda f: f.assign(dice=[np.inf, 0.5, 0.7, 0.2, 0.4]), "infinite"),
    (lambda f: f.assign(evaluation=[None, "a", "a", "a", "a"]), "'evaluation' has missing"),
])
def test_folds_table_bad_input(change, message):
    with pytest.raises(ValueError, match=message):
        tables.folds_results_table(change(fold_scores()))


def test_results_imports_no_keras():
    # a fresh interpreter: stage 09 tables must not pay for (or depend on) TensorFlow/Keras.
    code = ("import sys, strokeseg.evaluate.tables; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- summary table


def test_summary_table_values_and_order():
    scores = pd.DataFrame({"plane": ["sagittal", "axial", "axial", "axial", "sagittal"],
                           "model": ["rax", "xnet", "rax", "rax", "rax"],
                           "dice": [0.4, 0.2, 0.1, 0.5, np.nan],
                           "hd95": [1.0, 2.0, 3.0, 9.0, 5.0]})
    table = tables.summary_table(scores, ["plane", "model"], ["dice", "hd95"])
    assert list(table.columns) == ["plane", "model", "n", "dice_mean", "dice_std", "dice_median",
                                   "hd95_mean", "hd95_std", "hd95_median"]
    assert table[["plane", "model"]].values.tolist() == [
        ["axial", "rax"], ["axial", "xnet"], ["sagittal", "rax"]]
    assert table["n"].tolist() == [2, 1, 2]
    ax_rax = table.iloc[0]
    assert ax_rax["dice_mean"] == pytest.approx(0.3)
    assert ax_rax["dice_std"] == pytest.approx(np.sqrt(0.08))  # ddof 1
    assert ax_rax["hd95_median"] == pytest.approx(6.0)
    assert np.isnan(table.iloc[1]["dice_std"])
    sag = table.iloc[2]
    assert sag["dice_mean"] == pytest.approx(0.4) and sag["hd95_mean"] == pytest.approx(3.0)

    overall = tables.summary_table(scores, [], ["hd95"])
    assert overall["n"].tolist() == [5] and overall["hd95_median"].tolist() == [3.0]


def test_summary_table_bad_input():
    scores = pd.DataFrame({"plane": ["axial", None], "dice": [0.1, 0.2]})
    with pytest.raises(ValueError, match="missing columns"):
        tables.summary_table(scores, ["model"], ["dice"])
    with pytest.raises(ValueError, match="no rows"):
        tables.summary_table(scores.iloc[:0], ["plane"], ["dice"])
    with pytest.raises(ValueError, match="missing values"):
        tables.summary_table(scores, ["plane"], ["dice"])
    with pytest.raises(ValueError, match="no metrics"):
        tables.summary_table(scores, ["plane"], [])
    with pytest.raises(ValueError, match="distinct"):
        tables.summary_table(scores, ["dice"], ["dice"])


# --------------------------------------------------------------------------- paired Wilcoxon

REF8 = [0.30, 0.42, 0.55, 0.61, 0.25, 0.70, 0.48, 0.36]
GAIN8 = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]  # distinct: no ties, exact test


def test_wilcoxon_one_model_better_on_every_subject():
    subjects = [f"sub-{i}" for i in range(8)]
    better = [r + g for r, g in zip(REF8, GAIN8)]
    worse = [r - 0.1 * g for r, g in zip(REF8, GAIN8)]
    scores = paired(list(zip(subjects, REF8)), xnet=list(zip(subjects, better)),
                    clci=list(zip(subjects, worse)))
    table = tables.paired_wilcoxon(scores, reference="rax")
    assert list(table.columns) == ["plane", *tables.WILCOXON_COLUMNS]
    assert table["model"].tolist() == ["xnet", "clci"]  # order of first appearance
    x = table.iloc[0]
    assert (x["plane"], x["reference"], x["metric"], x["n_pairs"]) == ("axial", "rax", "dice", 8)
    assert x["median_difference"] == pytest.approx(0.045)
    assert x["mean_difference"] == pytest.approx(0.045)
    direct = stats.wilcoxon(np.array(better) - np.array(REF8), zero_method="wilcox")
    assert x["statistic"] == direct.statistic == 0.0
    assert x["p_value"] == pytest.approx(direct.pvalue) and x["p_value"] == pytest.approx(2 / 256)
    assert x["p_value"] < 0.05 and "exact" in x["method"]
    c = table.iloc[1]
    assert c["median_difference"] < 0 and c["p_value"] == pytest.approx(2 / 256)


def test_wilcoxon_matches_scipy_with_ties_and_zeros():
    subjects = [f"s{i}" for i in range(8)]
    diffs = np.array([0.0, 0.1, 0.1, -0.05, 0.2, 0.0, 0.3, 0.15])
    scores = paired(list(zip(subjects, [0.5] * 8)), xnet=list(zip(subjects, 0.5 + diffs)))
    row = tables.paired_wilcoxon(scores, reference="rax").iloc[0]
    model_minus_ref = (0.5 + diffs) - 0.5  # exactly what the function computes
    direct = stats.wilcoxon(model_minus_ref, zero_method="wilcox")
    assert row["statistic"] == pytest.approx(direct.statistic)
    assert row["p_value"] == pytest.approx(direct.pvalue)
    assert "permutation" in row["method"] and "2 zero differences dropped" in row["method"]


def test_wilcoxon_all_differences_zero_and_no_pairs():
    same = [("a", 0.5), ("b", 0.6), ("c", 0.7)]
    scores = paired(same, xnet=same, clci=[("x", 0.1), ("y", 0.2)])
    table = tables.paired_wilcoxon(scores, reference="rax")
    zero, none = table.iloc[0], table.iloc[1]
    assert zero["n_pairs"] == 3 and np.isnan(zero["statistic"]) and zero["p_value"] == 1.0
    assert zero["method"] == "all differences zero" and zero["median_difference"] == 0.0
    assert none["n_pairs"] == 0 and np.isnan(none["statistic"]) and np.isnan(none["p_value"])
    assert none["method"] == "no pairs"


def test_wilcoxon_inner_join_drops_unmatched_and_nan():
    scores = paired([("a", 0.5), ("b", 0.5), ("c", 0.5), ("d", np.nan)],
                    xnet=[("b", 0.7), ("c", 0.4), ("d", 0.9), ("e", 0.9)])
    row = tables.paired_wilcoxon(scores, reference="rax").iloc[0]
    assert row["n_pairs"] == 2  # a: no xnet; e: no rax; d: NaN on the reference side
    assert row["mean_difference"] == pytest.approx(0.05)
    direct = stats.wilcoxon(np.array([0.7, 0.4]) - 0.5, zero_method="wilcox")
    assert row["p_value"] == pytest.approx(direct.pvalue)


def test_wilcoxon_groups_in_order_of_first_appearance():
    s = [f"s{i}" for i in range(4)]
    frame = pd.concat([paired(list(zip(s, REF8[:4])), xnet=list(zip(s, REF8[4:]))).assign(plane=p)
                       for p in ("coronal", "axial")], ignore_index=True)
    table = tables.paired_wilcoxon(frame, reference="rax")
    assert table["plane"].tolist() == ["coronal", "axial"]
    assert table["p_value"].iloc[0] == pytest.approx(table["p_value"].iloc[1])


def test_wilcoxon_bad_input():
    scores = paired([("a", 0.5), ("a", 0.6)], xnet=[("a", 0.7)])
    with pytest.raises(ValueError, match="more than once"):
        tables.paired_wilcoxon(scores, reference="rax")
    good = paired([("a", 0.5)], xnet=[("a", 0.7)])
    with pytest.raises(ValueError, match="reference model 'unet'"):
        tables.paired_wilcoxon(good, reference="unet")
    with pytest.raises(ValueError, match=r"missing columns \['plane'\]"):
        tables.paired_wilcoxon(good.drop(columns="plane"), reference="rax")
    with pytest.raises(ValueError, match="no rows"):
        tables.paired_wilcoxon(good.iloc[:0], reference="rax")
    with pytest.raises(ValueError, match="'subject_name' has missing"):
        tables.paired_wilcoxon(good.assign(subject_name=[None, "a"]), reference="rax")

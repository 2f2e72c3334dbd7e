"""Tables of per-subject 3-D metrics: one row per (subject, mask), summaries per mask, per
lesion-volume bin and per Dice tier, and paired comparisons of masks on the same subjects.

A *mask* column names what was scored (stage 10: ``axial``, ``sagittal``, ``coronal``, ``fused``;
``strokeseg evaluate``: the predictions folders). Stage 10 and ``strokeseg evaluate`` write the
same tables with these functions, so their numbers are comparable row for row.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from strokeseg.evaluate.tables import paired_wilcoxon, summary_table
from strokeseg.evaluate.volume_metrics import METRIC_KEYS
from strokeseg.protocol.bins import bin_labels

SUMMARY_METRICS = ("dice", "precision", "recall", "volume_difference_voxels", "volume_difference_ml",
                   "lesion_count_difference", "lesionwise_f1", "hd95_mm")
BIN_METRICS = ("dice", "precision", "recall", "lesionwise_f1", "hd95_mm", "volume_difference_ml")
# metric -> which direction is better, for the paired comparisons
BETTER = {"dice": "higher", "precision": "higher", "recall": "higher", "lesionwise_f1": "higher",
          "hd95_mm": "lower", "volume_difference_ml": "lower", "lesion_count_difference": "lower"}


def subjects_frame(rows: list[dict], volume_bins: Mapping[str, int], edges: Sequence[float],
                   metrics: Sequence[str] = METRIC_KEYS) -> pd.DataFrame:
    """Rows of ``{subject_name, mask, <metrics>}`` with each subject's lesion-volume bin (index and
    label) inserted after the name."""
    labels = bin_labels(edges)
    frame = pd.DataFrame(rows)
    frame.insert(1, "volume_bin", frame["subject_name"].map(dict(volume_bins)).astype(int))
    frame.insert(2, "volume_bin_label",
                 frame["volume_bin"].map(lambda b: labels[b] if 0 <= b < len(labels) else str(b)))
    return frame[["subject_name", "volume_bin", "volume_bin_label", "mask", *metrics]]


def _in_order(frame: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(order)}
    return frame.sort_values("mask", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)


def summary(subjects: pd.DataFrame, order: Sequence[str], metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Per mask, in ``order``: n, mean, std (ddof 1), median of each metric (NaN ignored per metric)."""
    return _in_order(summary_table(subjects, ["mask"], list(metrics)), order)


def by_volume_bin(subjects: pd.DataFrame, edges: Sequence[float], order: Sequence[str],
                  metrics: Sequence[str] = BIN_METRICS) -> pd.DataFrame:
    """Per mask and lesion-volume bin (every bin of ``edges``, empty ones with n = 0): n and
    mean/std/median of each metric."""
    labels = bin_labels(edges)
    table = summary_per_group(subjects, "mask", order, "volume_bin", range(len(labels)), metrics)
    table.insert(2, "volume_bin_label", table["volume_bin"].map(lambda b: labels[b]))
    return table


def summary_per_group(subjects: pd.DataFrame, key: str, order: Sequence[str], column: str, groups: Sequence,
                      metrics: Sequence[str]) -> pd.DataFrame:
    """Per ``key`` value (those present, in ``order``) and every value of ``groups`` in ``column``,
    empty ones included with n = 0: n and mean/std/median of each metric. Tables of different runs
    then have the same rows."""
    table = summary_table(subjects, [key, column], list(metrics))
    present = [k for k in order if k in set(subjects[key])]
    full = pd.MultiIndex.from_product([present, list(groups)], names=[key, column])
    table = table.set_index([key, column]).reindex(full).reset_index()
    table["n"] = table["n"].fillna(0).astype(int)
    return table


# Dice tiers as the ISLES'22 3-D project reported them (docs/upstream-other-projects.md C.7):
# column -> [low, high), the top tier closed at 1.
DICE_TIERS = {"n_dice_ge_0.8": (0.8, np.inf), "n_dice_0.6_0.8": (0.6, 0.8), "n_dice_0.4_0.6": (0.4, 0.6),
              "n_dice_lt_0.4": (-np.inf, 0.4)}
# group -> which subjects: every one, or those whose truth has a voxel ("GT > 0" there)
DICE_GROUPS = ("all", "lesion")


def dice_tiers(subjects: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per mask (in ``order``, those present) and group (:data:`DICE_GROUPS`; ``lesion``: ``truth_voxels``
    ≥ 1): n, mean and median Dice and the number of subjects per tier of :data:`DICE_TIERS` (a Dice of
    exactly 0.8 is in the top tier, 0.6 in [0.6, 0.8)). Every (mask, group) row is listed, an empty
    group with n = 0. Lesion-free subjects score 1 or 0 by the empty-mask rule, which is why the
    ``lesion`` group is reported apart."""
    rows = []
    for mask in (m for m in order if m in set(subjects["mask"])):
        own = subjects[subjects["mask"] == mask]
        for group in DICE_GROUPS:
            members = own if group == "all" else own[own["truth_voxels"] >= 1]
            dice = members["dice"].dropna().to_numpy(dtype=float)
            row = {"mask": mask, "group": group, "n": len(dice),
                   "dice_mean": float(dice.mean()) if len(dice) else np.nan,
                   "dice_median": float(np.median(dice)) if len(dice) else np.nan}
            row.update({name: int(((dice >= low) & (dice < high)).sum()) for name, (low, high) in DICE_TIERS.items()})
            rows.append(row)
    return pd.DataFrame(rows, columns=["mask", "group", "n", "dice_mean", "dice_median", *DICE_TIERS])


def paired_comparison(subjects: pd.DataFrame, reference: str, order: Sequence[str],
                      metrics: Mapping[str, str] = BETTER) -> pd.DataFrame:
    """Per other mask (in ``order``) and metric: the mask's and the reference's means on the subjects
    both have, the mean and median of ``reference − mask``, which direction is better, and the
    paired two-sided Wilcoxon signed-rank test (:func:`strokeseg.evaluate.tables.paired_wilcoxon`).
    Columns: mask, metric, better, n_pairs, mask_mean, reference_mean, mean_difference,
    median_difference, statistic, p_value, method."""
    rows = []
    for metric, better in metrics.items():
        tests = paired_wilcoxon(subjects, reference=reference, metric=metric, model_column="mask", group_columns=[])
        reference_scores = subjects[subjects["mask"] == reference].set_index("subject_name")[metric]
        for test in tests.itertuples(index=False):
            scores = subjects[subjects["mask"] == test.model].set_index("subject_name")[metric]
            pairs = pd.concat([scores.rename("mask"), reference_scores.rename("reference")], axis=1,
                              join="inner").dropna()
            rows.append({"mask": test.model, "metric": metric, "better": better, "n_pairs": int(test.n_pairs),
                         "mask_mean": float(pairs["mask"].mean()) if len(pairs) else np.nan,
                         "reference_mean": float(pairs["reference"].mean()) if len(pairs) else np.nan,
                         # paired_wilcoxon's differences are mask − reference: the gain is minus that
                         "mean_difference": 0.0 - float(test.mean_difference),
                         "median_difference": 0.0 - float(test.median_difference),
                         "statistic": test.statistic, "p_value": test.p_value, "method": test.method})
    table = pd.DataFrame(rows)
    table["mask"] = pd.Categorical(table["mask"], categories=[m for m in order if m != reference], ordered=True)
    table = table.sort_values(["mask"], kind="stable").reset_index(drop=True)
    table["mask"] = table["mask"].astype(str)
    return table

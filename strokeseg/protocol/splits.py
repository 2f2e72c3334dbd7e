"""Subject-level splits: the 80/20 hold-out, the k folds, the inner validation set, normal slices.

Corrections of upstream (docs/upstream-raxnet.md §14.1, §14.2, §14.4, §14.6):

* Folds are made of SUBJECTS, never of slices, and one subject-level assignment is shared by all
  three planes, so no subject is ever on both sides of a train/test boundary.
* Every random choice takes a seed. Inputs are sorted by ``subject_name`` (and ``slice``) before
  any draw, so the result depends on the inputs' content and the seed, never on their row order.
* Model selection uses an inner validation set carved out of the training folds, never the test
  fold.
* Normal slices are drawn 1:1 (``ratio``) from the same subjects as the lesion slices, among
  slices that are lesion-free and contain brain, on the plane's own axis.
* ``cv.edge_slices`` keeps the first and last slices of each subject's stack out of both
  (:func:`without_edge_slices`; the LGG U-Net drops one, docs/upstream-other-projects.md D.1).

Quotas use round-half-up (``round(0.2 * n)`` in upstream's table: 319/154/64/49/44/25 →
64/31/13/10/9/5). The fraction is read as the decimal the user wrote (``Decimal(repr(x))``), so
``0.35 * 10`` is 3.5 and rounds to 4 rather than floating-point's 3.4999….
"""
from __future__ import annotations

import logging
import warnings
from decimal import ROUND_HALF_UP, Decimal
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from strokeseg.errors import StrokesegError

log = logging.getLogger(__name__)

__all__ = [
    "stratified_subset",
    "holdout_split",
    "subject_folds",
    "merge_small_strata",
    "inner_validation_subjects",
    "inner_validation_seed",
    "select_normal_slices",
    "normal_candidates",
    "without_edge_slices",
    "half_up_quota",
]


# Helpers ------------------------------------------------------------------------------------------
def half_up_quota(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up (0.5 → 1), computed on the decimal ``repr`` of fraction."""
    product = Decimal(repr(float(fraction))) * int(n)
    return int(product.to_integral_value(rounding=ROUND_HALF_UP))


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise StrokesegError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StrokesegError(f"{what} lacks column(s) {', '.join(missing)}")


def _require_unique_subjects(names: pd.Series | Sequence[str], what: str) -> None:
    names = pd.Series(list(names))
    duplicated = names[names.duplicated()]
    if len(duplicated):
        raise StrokesegError(f"{what}: subject {duplicated.iloc[0]!r} appears more than once")


def _check_fraction(fraction: float, name: str = "fraction") -> None:
    if not (0.0 < float(fraction) < 1.0):
        raise StrokesegError(f"{name} must be in (0, 1), got {fraction!r}")


# Groups -------------------------------------------------------------------------------------------
# Several sessions of one patient (a ``group``) must land on one side of every split. Every draw
# below is made over groups: the group table has one row per group, named by the group, whose
# volume bin is the largest bin among its subjects; the result is expanded back to subjects.
# Where each subject is its own group (ATLAS) the group table is the subject table, and every
# draw is the one made without groups.
def _group_table(subjects: pd.DataFrame) -> pd.DataFrame | None:
    """(subject_name = group, volume_bin) per group, or None when the table has no group column."""
    if "group" not in subjects.columns:
        return None
    return (subjects.groupby("group", sort=True)["volume_bin"].max().reset_index()
            .rename(columns={"group": "subject_name"}))


def _members(subjects: pd.DataFrame, groups) -> pd.Series:
    """Whether each subject's group is among ``groups``."""
    return subjects["group"].astype(str).isin({str(g) for g in groups})


# Hold-out -----------------------------------------------------------------------------------------
def stratified_subset(subjects: Sequence[str], strata: Sequence[int], fraction: float,
                      seed: int) -> list[str]:
    """Upstream's stratified draw (§2.1), seeded: a sorted list of the selected subjects.

    Within each stratum (in increasing stratum order), ``half_up_quota(fraction, n_stratum)``
    subjects are drawn uniformly without replacement from the stratum's subjects sorted by name.
    For tiny cohorts (``len(subjects) >= 2``) at least one subject is selected and at least one is
    left out: if the per-stratum quotas select none, one subject of the largest stratum (ties: the
    lowest stratum) is drawn; if they select all, one selected subject of the largest stratum is
    put back (seeded draws both).
    """
    _check_fraction(fraction)
    rng = _rng(seed)
    names = [str(s) for s in subjects]
    strata = list(strata)
    if len(names) != len(strata):
        raise StrokesegError(f"stratified_subset: {len(names)} subjects but {len(strata)} strata")
    _require_unique_subjects(names, "stratified_subset")
    if not names:
        return []
    order = sorted(range(len(names)), key=names.__getitem__)
    names = np.asarray([names[i] for i in order], dtype=object)
    strata = np.asarray([strata[i] for i in order])
    values, counts = np.unique(strata, return_counts=True)

    chosen: dict[object, list[str]] = {}
    for value in values:
        members = names[strata == value]
        k = half_up_quota(fraction, len(members))
        picked = rng.choice(len(members), size=k, replace=False) if k else []
        chosen[value] = sorted(members[i] for i in picked)

    if len(names) >= 2:
        largest = values[int(np.argmax(counts))]
        total = sum(len(v) for v in chosen.values())
        if total == 0:
            members = names[strata == largest]
            chosen[largest] = [members[int(rng.integers(len(members)))]]
        elif total == len(names):
            picked = chosen[largest]
            del picked[int(rng.integers(len(picked)))]
    return sorted(s for v in chosen.values() for s in v)


def holdout_split(subjects: pd.DataFrame, fraction: float,
                  seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split subjects into (train, holdout), stratified on ``volume_bin`` (upstream §2.1, seeded).

    ``holdout`` holds ``fraction`` of each volume bin (round half up); both frames keep all input
    columns, are sorted by ``subject_name`` and have a fresh index.
    """
    _require_columns(subjects, ["subject_name", "volume_bin"], "holdout_split: subjects table")
    _require_unique_subjects(subjects["subject_name"], "holdout_split")
    units = _group_table(subjects)
    units = subjects if units is None else units
    held = set(stratified_subset(units["subject_name"].astype(str).tolist(),
                                 units["volume_bin"].tolist(), fraction, seed))
    ordered = subjects.sort_values("subject_name", kind="mergesort").reset_index(drop=True)
    is_held = (_members(ordered, held) if "group" in ordered.columns
               else ordered["subject_name"].astype(str).isin(held))
    return (ordered[~is_held].reset_index(drop=True), ordered[is_held].reset_index(drop=True))


# Folds --------------------------------------------------------------------------------------------
def merge_small_strata(strata: Sequence[int], min_size: int) -> np.ndarray:
    """Stratification labels in which every stratum has at least ``min_size`` members.

    Strata are walked in increasing order and consecutive ones are pooled until the pool holds
    ``min_size`` members; a last pool that stays short joins the previous pool. So a tiny bin is
    merged with its neighbouring (next larger, or for the top bins next smaller) size bin, never
    with a distant one. If the whole cohort is smaller than ``min_size`` there is one stratum.
    Returns one group label (0, 1, …) per input element. Used for stratification only: the
    ``volume_bin`` values themselves are never changed.
    """
    strata = np.asarray(strata)
    if strata.size == 0:
        return np.zeros(0, dtype=int)
    values, counts = np.unique(strata, return_counts=True)
    groups: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i, count in enumerate(counts):
        current.append(i)
        filled += int(count)
        if filled >= min_size:
            groups.append(current)
            current, filled = [], 0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    label_of_value = np.empty(len(values), dtype=int)
    for label, members in enumerate(groups):
        label_of_value[members] = label
    return label_of_value[np.searchsorted(values, strata)]


def subject_folds(subjects: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign every subject to one of ``n_folds`` folds (1..n_folds), stratified on volume_bin.

    ``StratifiedKFold(n_folds, shuffle=True, random_state=seed)`` runs over the subjects sorted by
    name; the test indices of split i become fold i + 1. Bins with fewer than ``n_folds`` subjects
    are pooled with neighbouring bins for the stratification (``merge_small_strata``), so sklearn
    neither warns nor fails on them. With a ``group`` column the folds are drawn over groups (see
    Groups above) and the table keeps it. Returns columns subject_name, volume_bin, fold, sorted by
    subject_name. The same table serves all three planes.
    """
    _require_columns(subjects, ["subject_name", "volume_bin"], "subject_folds: subjects table")
    _require_unique_subjects(subjects["subject_name"], "subject_folds")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise StrokesegError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    _rng(seed)  # validates the seed
    groups = _group_table(subjects)
    if groups is not None:
        folds = subject_folds(groups, n_folds, seed).set_index("subject_name")["fold"]
        table = subjects[["subject_name", "group", "volume_bin"]].sort_values("subject_name", kind="mergesort")
        return table.assign(fold=table["group"].map(folds).astype(int)).reset_index(drop=True)
    if len(subjects) < n_folds:
        raise StrokesegError(f"cannot make {n_folds} folds from {len(subjects)} subjects; "
                             f"need at least one subject per fold")
    table = (subjects[["subject_name", "volume_bin"]]
             .sort_values("subject_name", kind="mergesort").reset_index(drop=True))
    labels = merge_small_strata(table["volume_bin"].to_numpy(), n_folds)
    fold = np.zeros(len(table), dtype=int)
    splitter = StratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():
        # Cannot trigger after merging; kept so a future sklearn message never reaches the user.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        for i, (_, test) in enumerate(splitter.split(np.zeros(len(table)), labels)):
            fold[test] = i + 1
    table["fold"] = fold
    return table


def inner_validation_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold``'s inner validation draw (a SeedSequence of both)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def inner_validation_subjects(folds: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Each fold's inner-validation part: subjects used for model selection, never for fitting.

    ``folds`` is the fold table (subject_name, volume_bin, fold). Every fold is split once into a
    training part and an inner-validation part (``stratified_subset`` on volume_bin, seeded by
    ``inner_validation_seed(seed, fold)``). When fold k is the test fold, a model fits on the
    training parts of the other folds and is selected on their inner-validation parts, so the
    test fold never picks a checkpoint (upstream did, §14.6); because the parts are fixed per fold,
    every slice is prepared once instead of once per test fold. A fold of one subject keeps it for
    training. Returns (fold, subject_name) sorted.
    """
    _require_columns(folds, ["subject_name", "volume_bin", "fold"], "inner_validation_subjects: fold table")
    _require_unique_subjects(folds["subject_name"], "inner_validation_subjects")
    _check_fraction(fraction)
    rows = []
    for fold, members in folds.groupby("fold", sort=True):
        units = _group_table(members)
        units = members if units is None else units
        chosen = stratified_subset(units["subject_name"].astype(str).tolist(),
                                   units["volume_bin"].tolist(), fraction,
                                   inner_validation_seed(seed, int(fold)))
        if units is not members:
            chosen = sorted(members.loc[_members(members, chosen), "subject_name"].astype(str))
        rows += [(int(fold), name) for name in chosen]
    if not rows:
        raise StrokesegError("no fold has two subjects: nothing can be held out for inner validation")
    return pd.DataFrame(rows, columns=["fold", "subject_name"])


# Normal slices ------------------------------------------------------------------------------------
def select_normal_slices(slices: pd.DataFrame, lesion_counts: pd.Series, ratio: float,
                         min_brain_pixels: int, seed: int) -> pd.DataFrame:
    """Normal (lesion-free, brain-containing) slices of one plane and one fold, per subject.

    ``slices`` has one row per (subject_name, slice) with lesion_pixels and brain_pixels;
    ``lesion_counts`` gives each subject's number of lesion slices (index subject_name; a subject
    missing from it counts 0). Candidates: ``lesion_pixels == 0`` and
    ``brain_pixels >= min_brain_pixels``.

    1. Each subject (by name) gets ``half_up_quota(ratio, lesion_count)`` slices drawn uniformly
       without replacement from its own candidates, or all of them if it has fewer.
    2. The summed shortfall is drawn uniformly without replacement from the remaining candidates of
       all subjects in ``slices`` (the same fold). If the fold has too few candidates in total,
       every candidate is returned and a warning is logged.

    One seeded generator drives both steps over input sorted by (subject_name, slice). Returns
    columns subject_name, slice sorted by (subject_name, slice).
    """
    _require_columns(slices, ["subject_name", "slice", "lesion_pixels", "brain_pixels"],
                     "select_normal_slices: slices table")
    if not (float(ratio) >= 0.0):
        raise StrokesegError(f"ratio must be >= 0, got {ratio!r}")
    rng = _rng(seed)
    table = (slices[["subject_name", "slice", "lesion_pixels", "brain_pixels"]]
             .sort_values(["subject_name", "slice"], kind="mergesort").reset_index(drop=True))
    dup = table.duplicated(["subject_name", "slice"])
    if dup.any():
        row = table[dup].iloc[0]
        raise StrokesegError(f"select_normal_slices: slice {row['slice']!r} of subject "
                             f"{row['subject_name']!r} appears more than once")
    if lesion_counts.index.duplicated().any():
        raise StrokesegError("select_normal_slices: lesion_counts has a subject more than once")
    if (pd.to_numeric(lesion_counts) < 0).any():
        raise StrokesegError("select_normal_slices: lesion_counts must be >= 0")

    candidates = normal_candidates(table, min_brain_pixels)
    chosen = np.zeros(len(candidates), dtype=bool)
    subjects = sorted(set(table["subject_name"]) | set(lesion_counts.index))
    wanted = 0
    for subject in subjects:
        quota = half_up_quota(ratio, int(lesion_counts.get(subject, 0)))
        wanted += quota
        own = np.flatnonzero((candidates["subject_name"] == subject).to_numpy())
        if quota >= len(own):
            chosen[own] = True
        elif quota:
            chosen[own[rng.choice(len(own), size=quota, replace=False)]] = True

    shortfall = wanted - int(chosen.sum())
    if shortfall:
        remaining = np.flatnonzero(~chosen)
        take = min(shortfall, len(remaining))
        if take:
            chosen[remaining[rng.choice(len(remaining), size=take, replace=False)]] = True
        if take < shortfall:
            log.warning("normal slices: %d wanted but only %d candidates in the fold",
                        wanted, int(chosen.sum()))
    return candidates.loc[chosen, ["subject_name", "slice"]].reset_index(drop=True)


def normal_candidates(slices: pd.DataFrame, min_brain_pixels: int) -> pd.DataFrame:
    """The rows of ``slices`` that may serve as normal slices: ``lesion_pixels == 0`` and
    ``brain_pixels >= min_brain_pixels`` (slices outside the head hold nothing to learn from)."""
    keep = (slices["lesion_pixels"] == 0) & (slices["brain_pixels"] >= min_brain_pixels)
    return slices[keep].reset_index(drop=True)


def without_edge_slices(slices: pd.DataFrame, stack: pd.DataFrame, k: int) -> pd.DataFrame:
    """``slices`` without the first ``k`` and last ``k`` slices of each subject's stack.

    ``stack`` lists every slice of every subject (subject_name, slice; a store index), so the ends
    are those of the volume in this plane, whatever ``slices`` holds. A subject of ``slices`` missing
    from ``stack`` is an error."""
    if k <= 0:
        return slices
    ends = stack.groupby("subject_name")["slice"].agg(["min", "max"])
    unknown = sorted(set(slices["subject_name"]) - set(ends.index))
    if unknown:
        raise StrokesegError(f"without_edge_slices: subject {unknown[0]!r} has no slice stack")
    first = slices["subject_name"].map(ends["min"])
    last = slices["subject_name"].map(ends["max"])
    keep = (slices["slice"] >= first + k) & (slices["slice"] <= last - k)
    return slices[keep].reset_index(drop=True)


# Roles of the fold parts --------------------------------------------------------------------------
PARTS = ("train", "inner_val")
ROLES = ("train", "inner_val", "test")


def fold_parts(test_fold: int, n_folds: int) -> dict[str, list[tuple[int, str]]]:
    """Which (fold, part) pairs each role uses when ``test_fold`` is held out.

    train: the training parts of the other folds; inner_val: their inner-validation parts (model
    selection); test: both parts of the test fold.
    """
    if not 1 <= test_fold <= n_folds:
        raise StrokesegError(f"test fold {test_fold} is outside 1..{n_folds}")
    others = [f for f in range(1, n_folds + 1) if f != test_fold]
    return {"train": [(f, "train") for f in others],
            "inner_val": [(f, "inner_val") for f in others],
            "test": [(test_fold, part) for part in PARTS]}

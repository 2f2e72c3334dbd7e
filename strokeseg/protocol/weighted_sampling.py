"""Foreground-weighted random slice sampling, the LGG U-Net's sampler (docs/upstream-other-projects.md
D.2) as a batch-plan kind (``batches.kind = "foreground_weighted"``); and ``"every_slice"``, every slice
of the pool once per epoch in a fresh order, as the CT projects' loaders (A.1, B.2) visit their slices.

A fold part's *pool* is every candidate slice of its subjects: the lesion slices and every eligible
lesion-free slice (stage 04). Each slice gets a weight:

* per subject with candidate slices s = 1..n, area_s its lesion pixels, total = Σ area_s and
  floor = f·total/n (f = ``batches.foreground_floor``): w_s = (area_s + floor) / ((1 + f)·total).
  A subject's weights sum to 1, so subjects are about equally likely, and within a subject a
  slice's chance grows with its lesion area while lesion-free slices keep a share;
* a lesion-free subject gets 1/n per slice (upstream gave it all-zero weights: never drawn);
* every subject's weights are divided by the part's number of subjects: a part sums to 1;
* ``every_slice`` (no floor): every slice of the part weighs the same.

:func:`pool_plan` writes the pool as a batch plan, every slice once, in (subject_name, slice) order,
the last batch padded with pool slices of weight 0 flagged ``repeat`` (as the distribution plans flag
reuse), so validation and test-fold evaluation visit every slice once. :func:`epoch_draw` draws an
epoch's slots with replacement in proportion to the weights from ``default_rng([seed, 3, epoch])``,
or (``replace=False``) every slot of non-zero weight once in a fresh permutation, then the next
permutation's first slots until the batches are full: a stateless function of (seed, epoch), so a
resumed run draws exactly what an uninterrupted one did.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strokeseg.errors import StrokesegError
from strokeseg.protocol.batches import BATCH_COLUMNS, LESION_COLUMNS, NORMAL_COLUMNS, _check_overlap, _prepare

WEIGHTED_BATCH_COLUMNS = (*BATCH_COLUMNS, "weight")
WEIGHTED_USAGE_COLUMNS = ("kind", "bin", "available", "n_batches", "padded", "weight", "expected_per_batch")

# Stream tag of the per-epoch draw; 0-2 are compose_batches' and epoch_batch_order's (strokeseg.protocol.batches).
_STREAM_DRAW = 3


def slice_weights(subjects, areas, floor: float | None) -> np.ndarray:
    """The sampling weight of every slice of one part (see the module docstring); sums to 1.

    ``subjects`` and ``areas`` (lesion pixels, >= 0) are aligned, one entry per pool slice; ``floor``
    None: every slice the same weight (``every_slice``)."""
    if floor is None:
        return np.full(len(areas), 1.0 / len(areas)) if len(areas) else _empty_pool()
    if not float(floor) > 0.0:
        raise StrokesegError(f"foreground floor must be > 0, got {floor!r}")
    areas = np.asarray(areas, dtype=np.float64)
    if len(areas) == 0:
        _empty_pool()
    if not np.isfinite(areas).all() or (areas < 0).any():
        raise StrokesegError("lesion areas must be finite and non-negative")
    groups = pd.Series(areas).groupby(np.asarray(subjects, dtype=object))
    n = groups.transform("size").to_numpy(dtype=np.float64)
    total = groups.transform("sum").to_numpy(dtype=np.float64)
    lesioned = total > 0
    weights = 1.0 / n                                          # a lesion-free subject: uniform
    weights[lesioned] = ((areas[lesioned] + floor * total[lesioned] / n[lesioned])
                         / ((1.0 + floor) * total[lesioned]))
    return weights / groups.ngroups


def _empty_pool():
    raise StrokesegError("cannot weight an empty pool of slices")


def pool_plan(lesions: pd.DataFrame, normals: pd.DataFrame, n_bins: int, batch_size: int,
              floor: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One part's pool as a batch plan, and its usage table: ``(plan, usage)``.

    ``lesions``: subject_name, slice, sum_voxel, slice_bin (0..n_bins-1); ``normals``: subject_name,
    slice (every eligible lesion-free slice). ``plan`` has the distribution plans' columns
    (:data:`~strokeseg.protocol.batches.BATCH_COLUMNS`) plus ``weight``: the pool in
    (subject_name, slice) order dealt into batches of ``batch_size``, kind "lesion" where sum_voxel > 0;
    the last batch is filled up with the first pool slices again, weight 0 and repeat 1.

    ``usage`` has one row per lesion bin and one "normal" row (bin -1): available (pool slices),
    n_batches, padded (padding rows), weight (the bin's share of the part's weight: of the draws) and
    expected_per_batch (weight × batch_size).
    """
    if batch_size < 1:
        raise StrokesegError(f"batch_size must be at least 1, got {batch_size}")
    les = _prepare(lesions, LESION_COLUMNS, "lesion")
    nor = _prepare(normals, NORMAL_COLUMNS, "normal")
    _check_overlap(les, nor)
    if (les["sum_voxel"] <= 0).any() or not les["slice_bin"].between(0, n_bins - 1).all():
        raise StrokesegError(f"lesion slices need sum_voxel > 0 and slice_bin in 0..{n_bins - 1}")
    pool = pd.concat([les, nor.assign(sum_voxel=0, slice_bin=-1)], ignore_index=True)
    pool = pool.sort_values(["subject_name", "slice"], kind="mergesort").reset_index(drop=True)
    if pool.empty:
        raise StrokesegError("cannot make a foreground-weighted plan: the part has no slices")
    pool["weight"] = slice_weights(pool["subject_name"], pool["sum_voxel"], floor)
    pool["repeat"] = 0
    padding = pool.iloc[np.resize(np.arange(len(pool)), -len(pool) % batch_size)].assign(weight=0.0, repeat=1)
    plan = pd.concat([pool, padding], ignore_index=True)
    n_batches = len(plan) // batch_size
    plan["batch"] = np.repeat(np.arange(1, n_batches + 1, dtype=np.int64), batch_size)
    plan["position"] = np.tile(np.arange(batch_size, dtype=np.int64), n_batches)
    plan["kind"] = np.where(plan["sum_voxel"] > 0, "lesion", "normal")
    plan["slice_bin"] = plan["slice_bin"].astype(np.int64)

    rows = []
    for b in [*range(n_bins), -1]:
        in_bin = plan["slice_bin"] == b
        weight = float(plan.loc[in_bin, "weight"].sum())
        rows.append({"kind": "normal" if b < 0 else "lesion", "bin": b,
                     "available": int((in_bin & (plan["repeat"] == 0)).sum()), "n_batches": n_batches,
                     "padded": int((in_bin & (plan["repeat"] == 1)).sum()), "weight": weight,
                     "expected_per_batch": weight * batch_size})
    return plan[list(WEIGHTED_BATCH_COLUMNS)], pd.DataFrame(rows, columns=list(WEIGHTED_USAGE_COLUMNS))


def epoch_draw(weights, n_batches: int, batch_size: int, epoch: int, seed: int, replace: bool = True) -> np.ndarray:
    """Slot indices (n_batches, batch_size) of epoch ``epoch``, drawn with replacement in proportion
    to ``weights`` (one per slot, normalised here: several parts' weights may be concatenated); or
    without ``replace``, every slot of non-zero weight once, in a fresh order, repeated from a second
    order where the batches hold more slots than that."""
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if not np.isfinite(weights).all() or (weights < 0).any() or not weights.sum() > 0:
        raise StrokesegError("sampling weights must be finite, non-negative and not all zero")
    if min(n_batches, batch_size) < 0 or min(epoch, seed) < 0:
        raise StrokesegError("n_batches, batch_size, epoch and seed must be non-negative")
    rng = np.random.default_rng([int(seed), _STREAM_DRAW, int(epoch)])
    if replace:
        slots = rng.choice(len(weights), size=n_batches * batch_size, replace=True, p=weights / weights.sum())
    else:
        real = np.flatnonzero(weights > 0)
        passes = -(-(n_batches * batch_size) // len(real))
        slots = np.concatenate([rng.permutation(real) for _ in range(passes)])[:n_batches * batch_size]
    return slots.astype(np.int64).reshape(n_batches, batch_size)

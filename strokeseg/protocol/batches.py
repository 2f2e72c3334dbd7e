"""Distribution-matched batch plans: which lesion and normal slices go together in each batch.

Upstream (docs/upstream-raxnet.md §5, §14 item 5) rounded per-bin slot counts, which gave 0
slots to the rare large-lesion bins, took as many batches as the scarcest bin allowed, and
silently dropped 14-35 % of lesion slices. Normal slices were batched in ``glob`` order and the
batches were visited in the same order every epoch. Here:

* slots per bin come from largest-remainder (Hamilton) allocation with at least one slot for every
  non-empty bin (:func:`allocate_slots`);
* the number of batches follows the *cover* rule: enough batches for every lesion slice to be used
  at least once per epoch. Bins that run out are cycled in a fresh shuffled order and the extra
  uses are flagged ``repeat = 1``. No lesion slice is dropped;
* normals are dealt from a seeded shuffle of the whole pool, cycled the same way if the pool is too
  small; normals left over when the pool is larger are counted in the usage table and logged;
* :func:`epoch_batch_order` gives a fresh seeded visiting order per epoch.

Every random choice draws from its own stream, ``numpy.random.default_rng([seed, stream, i])``, so
the plan depends only on the inputs and the seed, never on input row order (inputs are sorted by
``(subject_name, slice)`` first).
"""
from __future__ import annotations

import logging
import numbers
from typing import Sequence

import numpy as np
import pandas as pd

from strokeseg.errors import StrokesegError

log = logging.getLogger(__name__)

LESION_COLUMNS = ("subject_name", "slice", "sum_voxel", "slice_bin")
NORMAL_COLUMNS = ("subject_name", "slice")
BATCH_COLUMNS = ("batch", "position", "kind", "subject_name", "slice", "sum_voxel", "slice_bin",
                 "repeat")
USAGE_COLUMNS = ("kind", "bin", "available", "slots_per_batch", "n_batches", "uses", "used_unique",
                 "repeated", "unused")

# Stream tags for the seeded generators (keeps lesion bins, normals and epoch orders independent).
_STREAM_LESION, _STREAM_NORMAL, _STREAM_EPOCH = 0, 1, 2


def allocate_slots(counts: Sequence[int], slots: int) -> np.ndarray:
    """Per-bin slot counts summing to ``slots``, proportional to ``counts``.

    Rule (exact integer arithmetic, no float ties):

    1. Empty bins get 0 slots.
    2. Every non-empty bin whose proportional share ``slots * n_b / N`` is below one slot gets
       exactly 1; those bins and their slots are set aside and the shares of the remaining bins are
       recomputed over the remaining slots and counts. Repeat until every remaining share is >= 1.
    3. The remaining bins get the floor of their share, and the slots still free go one each to the
       largest remainders; ties go to the larger count, then to the lower bin index.

    When no bin needs the minimum this is plain largest-remainder (Hamilton) allocation.
    Raises StrokesegError when all counts are zero, a count is negative, or there are more
    non-empty bins than slots.
    """
    slots = _as_int(slots, "slots")
    if slots < 1:
        raise StrokesegError(f"slots must be at least 1, got {slots}")
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size == 0:
        raise StrokesegError(f"counts must be a non-empty 1-D sequence, got shape {arr.shape}")
    values = [_as_int(c, "count") for c in arr.tolist()]
    if any(c < 0 for c in values):
        raise StrokesegError(f"bin counts must be non-negative, got {values}")
    nonempty = [i for i, c in enumerate(values) if c > 0]
    if not nonempty:
        raise StrokesegError("cannot allocate batch slots: every lesion bin is empty")
    if len(nonempty) > slots:
        raise StrokesegError(
            f"{len(nonempty)} non-empty bins need at least {len(nonempty)} lesion slots per batch, "
            f"but there are only {slots}; merge bins or enlarge the batch")

    out = np.zeros(len(values), dtype=np.int64)
    free = list(nonempty)
    left = slots
    while True:
        total = sum(values[i] for i in free)
        small = [i for i in free if left * values[i] < total]       # share below one slot
        if not small:
            break
        for i in small:
            out[i] = 1
        left -= len(small)
        free = [i for i in free if i not in small]
        if not free:
            break
    if free:
        total = sum(values[i] for i in free)
        for i in free:
            out[i] = left * values[i] // total
        rest = left - sum(int(out[i]) for i in free)
        order = sorted(free, key=lambda i: (-(left * values[i] % total), -values[i], i))
        for i in order[:rest]:
            out[i] += 1
    assert int(out.sum()) == slots
    return out


def compose_batches(lesions: pd.DataFrame, normals: pd.DataFrame, n_bins: int,
                    lesion_per_batch: int, normal_per_batch: int,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compose one epoch's batches: ``(batches, usage)``.

    ``lesions``: one row per lesion slice with columns subject_name, slice, sum_voxel and slice_bin
    (0-based, < n_bins). ``normals``: one row per normal slice with columns subject_name, slice.
    Other columns are ignored. A (subject_name, slice) pair may appear once, in one frame only.

    ``batches`` has one row per slot, sorted by (batch, position): batch (1-based), position
    (lesion slots first, grouped by ascending bin, then normals), kind ("lesion" | "normal"),
    subject_name, slice, sum_voxel (0 for normals), slice_bin (-1 for normals), repeat (1 for a
    use beyond the first of that slice in this plan).

    ``usage`` has one row per lesion bin 0..n_bins-1 (empty bins included) and one "normal" row
    (bin -1): available, slots_per_batch, n_batches, uses, used_unique, repeated = uses -
    used_unique, unused = available - used_unique (always 0 for lesion bins).

    Within a batch a slice appears at most once as long as its bin (or the normal pool) has at least
    as many slices as slots per batch; otherwise repeats inside a batch are unavoidable.
    """
    n_bins = _as_int(n_bins, "n_bins")
    lesion_per_batch = _as_int(lesion_per_batch, "lesion_per_batch")
    normal_per_batch = _as_int(normal_per_batch, "normal_per_batch")
    seed = _as_int(seed, "seed")
    if n_bins < 1:
        raise StrokesegError(f"n_bins must be at least 1, got {n_bins}")
    if lesion_per_batch < 1:
        raise StrokesegError(f"lesion_per_batch must be at least 1, got {lesion_per_batch}")
    if normal_per_batch < 0:
        raise StrokesegError(f"normal_per_batch must be non-negative, got {normal_per_batch}")
    if seed < 0:
        raise StrokesegError(f"seed must be a non-negative integer, got {seed}")

    les = _prepare(lesions, LESION_COLUMNS, "lesion")
    nor = _prepare(normals, NORMAL_COLUMNS, "normal")
    if les.empty:
        raise StrokesegError("cannot compose batches: there are no lesion slices")
    if nor.empty and normal_per_batch > 0:
        raise StrokesegError(
            f"cannot compose batches: there are no normal slices, but {normal_per_batch} normal "
            "slots per batch are asked for")
    _check_overlap(les, nor)

    bins = _integer_column(les["slice_bin"], "lesion", "slice_bin")
    if bins.min() < 0 or bins.max() >= n_bins:
        bad = int(bins[(bins < 0) | (bins >= n_bins)][0])
        raise StrokesegError(f"lesion slice_bin {bad} is outside 0..{n_bins - 1}")
    sum_voxel = les["sum_voxel"].to_numpy()
    if not pd.api.types.is_numeric_dtype(les["sum_voxel"]) or pd.isna(sum_voxel).any():
        raise StrokesegError("lesion sum_voxel must be numeric with no missing values")
    sum_voxel = (sum_voxel.astype(np.int64) if pd.api.types.is_integer_dtype(les["sum_voxel"])
                 else sum_voxel.astype(np.float64))
    les_slice = _integer_column(les["slice"], "lesion", "slice")
    nor_slice = _integer_column(nor["slice"], "normal", "slice")

    counts = np.bincount(bins, minlength=n_bins)
    k = allocate_slots(counts, lesion_per_batch)
    n = max(-(-int(counts[b]) // int(k[b])) for b in range(n_bins) if counts[b] > 0)

    # Lesion slots: bin b occupies positions offset_b .. offset_b + k_b - 1 of every batch.
    les_idx = np.zeros((n, lesion_per_batch), dtype=np.int64)
    les_rep = np.zeros((n, lesion_per_batch), dtype=np.int64)
    usage_rows = []
    offset = 0
    for b in range(n_bins):
        kb, nb = int(k[b]), int(counts[b])
        if kb:
            members = np.flatnonzero(bins == b)
            order, rep = _deal(nb, kb, n, np.random.default_rng([seed, _STREAM_LESION, b]))
            les_idx[:, offset:offset + kb] = members[order].reshape(n, kb)
            les_rep[:, offset:offset + kb] = rep.reshape(n, kb)
            offset += kb
        usage_rows.append(_usage("lesion", b, nb, kb, n))

    nor_idx = np.zeros((n, normal_per_batch), dtype=np.int64)
    nor_rep = np.zeros((n, normal_per_batch), dtype=np.int64)
    if normal_per_batch:
        order, rep = _deal(len(nor), normal_per_batch, n,
                           np.random.default_rng([seed, _STREAM_NORMAL]))
        nor_idx[:] = order.reshape(n, normal_per_batch)
        nor_rep[:] = rep.reshape(n, normal_per_batch)
    normal_usage = _usage("normal", -1, len(nor), normal_per_batch, n)
    usage_rows.append(normal_usage)
    if normal_usage["unused"]:
        log.info("batch plan: %d of %d normal slices are not used (%d batches x %d normal slots)",
                 normal_usage["unused"], len(nor), n, normal_per_batch)
    if normal_usage["repeated"]:
        log.info("batch plan: normal pool of %d slices is cycled; %d repeated uses",
                 len(nor), normal_usage["repeated"])

    width = lesion_per_batch + normal_per_batch
    les_names = les["subject_name"].to_numpy(dtype=object)
    nor_names = nor["subject_name"].to_numpy(dtype=object)
    batches = pd.DataFrame({
        "batch": np.repeat(np.arange(1, n + 1, dtype=np.int64), width),
        "position": np.tile(np.arange(width, dtype=np.int64), n),
        "kind": np.concatenate([np.full((n, lesion_per_batch), "lesion", dtype=object),
                                np.full((n, normal_per_batch), "normal", dtype=object)],
                               axis=1).ravel(),
        "subject_name": np.concatenate([les_names[les_idx], nor_names[nor_idx]], axis=1).ravel(),
        "slice": np.concatenate([les_slice[les_idx], nor_slice[nor_idx]], axis=1).ravel(),
        "sum_voxel": np.concatenate([sum_voxel[les_idx],
                                     np.zeros((n, normal_per_batch), dtype=sum_voxel.dtype)],
                                    axis=1).ravel(),
        "slice_bin": np.concatenate([bins[les_idx],
                                     np.full((n, normal_per_batch), -1, dtype=np.int64)],
                                    axis=1).ravel(),
        "repeat": np.concatenate([les_rep, nor_rep], axis=1).ravel(),
    }, columns=list(BATCH_COLUMNS))
    usage = pd.DataFrame(usage_rows, columns=list(USAGE_COLUMNS))
    for col in USAGE_COLUMNS[1:]:
        usage[col] = usage[col].astype(np.int64)
    return batches, usage


def epoch_batch_order(n_batches: int, epoch: int, seed: int, fixed_order: bool) -> np.ndarray:
    """The order in which batch indices 0..n_batches-1 are visited in ``epoch``.

    A fresh permutation per epoch, drawn from ``default_rng([seed, 2, epoch])``; with
    ``fixed_order`` simply ``0..n_batches-1`` every epoch (upstream's behaviour).
    """
    n_batches = _as_int(n_batches, "n_batches")
    epoch = _as_int(epoch, "epoch")
    seed = _as_int(seed, "seed")
    if n_batches < 0:
        raise StrokesegError(f"n_batches must be non-negative, got {n_batches}")
    if epoch < 0 or seed < 0:
        raise StrokesegError(f"epoch and seed must be non-negative, got epoch={epoch}, seed={seed}")
    if fixed_order:
        return np.arange(n_batches, dtype=np.int64)
    rng = np.random.default_rng([seed, _STREAM_EPOCH, epoch])
    return rng.permutation(n_batches).astype(np.int64)


# --------------------------------------------------------------------------------------------------

def _deal(n_items: int, per_batch: int, n_batches: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Deal ``per_batch * n_batches`` uses from ``n_items`` items, batch after batch.

    Items come in shuffled passes; each pass is a fresh permutation. Uses beyond the first pass are
    flagged as repeats. When a pass starts in the middle of a batch, the items already in that batch
    are moved to the end of the new pass, so no batch holds an item twice (possible whenever
    ``n_items >= per_batch``).
    """
    total = per_batch * n_batches
    order = np.empty(total, dtype=np.int64)
    filled = 0
    while filled < total:
        perm = rng.permutation(n_items)
        partial = filled % per_batch
        if partial and n_items >= per_batch:
            in_batch = np.isin(perm, order[filled - partial:filled])
            perm = np.concatenate([perm[~in_batch], perm[in_batch]])
        take = min(n_items, total - filled)
        order[filled:filled + take] = perm[:take]
        filled += take
    repeat = (np.arange(total) >= n_items).astype(np.int64)
    return order, repeat


def _usage(kind: str, b: int, available: int, slots: int, n_batches: int) -> dict:
    uses = slots * n_batches
    unique = min(uses, available)
    return {"kind": kind, "bin": b, "available": available, "slots_per_batch": slots,
            "n_batches": n_batches, "uses": uses, "used_unique": unique,
            "repeated": uses - unique, "unused": available - unique}


def _prepare(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise StrokesegError(
            f"{what} slices must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StrokesegError(f"{what} slices lack column(s) {', '.join(missing)}")
    out = frame.loc[:, list(columns)].reset_index(drop=True)
    if out[["subject_name", "slice"]].isna().any().any():
        raise StrokesegError(f"{what} slices have missing subject_name or slice values")
    dup = out.duplicated(["subject_name", "slice"])
    if dup.any():
        row = out[dup].iloc[0]
        raise StrokesegError(
            f"{what} slice ({row['subject_name']}, {row['slice']}) is listed more than once")
    return out.sort_values(["subject_name", "slice"], kind="mergesort").reset_index(drop=True)


def _check_overlap(les: pd.DataFrame, nor: pd.DataFrame) -> None:
    if les.empty or nor.empty:
        return
    both = les[["subject_name", "slice"]].merge(nor[["subject_name", "slice"]], how="inner")
    if not both.empty:
        row = both.iloc[0]
        raise StrokesegError(f"slice ({row['subject_name']}, {row['slice']}) is listed both as a "
                             f"lesion slice and as a normal slice ({len(both)} such slices)")


def _integer_column(series: pd.Series, what: str, name: str) -> np.ndarray:
    values = series.to_numpy()
    if pd.api.types.is_integer_dtype(series):
        return values.astype(np.int64)
    try:
        as_float = values.astype(np.float64)
    except (TypeError, ValueError):
        raise StrokesegError(f"{what} column {name} must hold integers") from None
    if len(as_float) and (np.isnan(as_float).any() or (as_float != np.round(as_float)).any()):
        raise StrokesegError(f"{what} column {name} must hold integers with no missing values")
    return as_float.astype(np.int64)


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise StrokesegError(f"{name} must be an integer, got {value!r}")
    return int(value)

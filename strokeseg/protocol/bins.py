"""Size bins, with one convention for every stage: right-closed, ``lo < v <= hi``.

Upstream mixed right-closed bins (splitting, k-fold) with left-closed ones (batching, plots)
(docs/upstream-raxnet.md §14.3). We keep the splitting convention everywhere. Bin indices are
0-based; labels read like ``(5000, 30000]``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def assign_bins(values, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each value: i such that edges[i] < v <= edges[i+1].

    Values at or below the first edge go to bin 0 and values above the last edge to the last bin,
    so every value has a bin (a lesion always has a positive size).
    """
    values = np.asarray(values, dtype=float)
    inner = np.asarray(edges[1:-1], dtype=float)
    return np.searchsorted(inner, values, side="left").astype(int)


def bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"({_fmt(lo)}, {_fmt(hi)}]" if not math.isinf(hi) else f"> {_fmt(lo)}"
            for lo, hi in zip(edges[:-1], edges[1:])]


def bin_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    return np.bincount(np.asarray(bins, dtype=int), minlength=n_bins)


def _fmt(value: float) -> str:
    return f"{int(value):,}".replace(",", "") if float(value).is_integer() else f"{value:g}"

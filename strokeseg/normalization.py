"""Intensity normalisation onto the 0..255 scale the models see.

``slice_max`` is upstream's rule (reference/upstream-raxnet.md §6): each 2-D slice divided by its
own maximum and multiplied by 255, so intensities depend on what else the slice contains; we add
the missing guard (an all-zero slice stays zero instead of becoming NaN). ``volume_robust`` is the
correction of §14.8: one linear map per volume, shared by the three planes, from the
[p_lo, p_hi] percentiles of the non-zero (head) voxels to [0, 255], clipped.
"""
from __future__ import annotations

import numpy as np

SCALE = 255.0


def slice_max(stack: np.ndarray) -> np.ndarray:
    """Upstream per-slice ``x / max(x) * 255`` over a (n, h, w) stack; empty slices stay 0."""
    stack = np.asarray(stack, dtype=np.float32)
    peak = stack.reshape(len(stack), -1).max(axis=1)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float32)
    out = stack * (SCALE / safe)[:, None, None]
    out[peak <= 0] = 0.0
    return out


def robust_range(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The intensity window of a volume: percentiles of its non-zero voxels (the head)."""
    voxels = volume[volume != 0]
    if voxels.size == 0:
        voxels = volume.ravel()
    lo, hi = np.percentile(voxels, percentiles)
    if not hi > lo:  # nearly constant head: fall back to the full range
        lo, hi = float(voxels.min()), float(voxels.max())
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def volume_robust(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Per-volume percentile window mapped linearly to 0..255 and clipped; background stays 0."""
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = robust_range(volume, percentiles)
    out = (volume - np.float32(lo)) * np.float32(SCALE / (hi - lo))
    np.clip(out, 0.0, SCALE, out=out)
    out[volume == 0] = 0.0
    return out


def to_store_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Store values on the 0..255 scale; uint8 rounds to the nearest step (1/255 of the window)."""
    if dtype == "uint8":
        return np.rint(np.clip(values, 0.0, SCALE)).astype(np.uint8)
    return np.asarray(values).astype(dtype)

"""Intensity normalisation onto the 0..255 scale the models see, per channel kind.

``slice_max`` is upstream's rule (docs/upstream-raxnet.md §6): each 2-D slice divided by its
own maximum and multiplied by 255, so intensities depend on what else the slice contains; we add
the missing guard (an all-zero slice stays zero instead of becoming NaN). ``volume_robust`` is the
correction of §14.8: one linear map per volume, shared by the three planes, from the
[p_lo, p_hi] percentiles of the head voxels to [0, 255], clipped. Which voxels are the head is
``convert.head_region`` (:mod:`strokeseg.data.head_region`): ``robust`` (default) finds the brain
without relying on an exact-zero background (the MNI template on the MNI grid, the intensities
elsewhere, hence the affine), and the map is applied to every voxel, so a noisy background below the
window becomes 0 as an exact-zero one is, and a skull above it saturates at 255; ``nonzero`` (the
original rule) takes the non-zero voxels and touches only them (exact zeros stay 0).

Other channel kinds (:mod:`strokeseg.data.subjects`), all per volume and shared by the planes:

- ``mr`` (DWI, ADC, FLAIR, …): z-score over the non-zero voxels (the field of view; as the
  ISLES'22 3-D project normalised DWI), ``±ZSCORE_RANGE`` standard deviations mapped onto 0..255
  and clipped. Exact zeros (outside the field of view) stay 0, as the canvas padding is. With
  ``convert.mr_normalization="clip_zscore"`` the LGG U-Net's rule instead: clipped to percentiles of
  all voxels, then z-scored over all voxels (:func:`clipped_zscore`).
- ``ct``: a Hounsfield window (``convert.ct_window``, brain window [0, 80] by default) mapped onto
  0..255 and clipped.
- ``image8``: 8-bit display images (CT PNG slices) are on the 0..255 scale already: used as they are.
- ``t1``: ``convert.normalization`` (the rules above).
"""
from __future__ import annotations

import numpy as np

from strokeseg.data.head_region import check_rule, window_values

SCALE = 255.0


def slice_max(stack: np.ndarray) -> np.ndarray:
    """Upstream per-slice ``x / max(x) * 255`` over a (n, h, w) stack; empty slices stay 0."""
    stack = np.asarray(stack, dtype=np.float32)
    peak = stack.reshape(len(stack), -1).max(axis=1)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float32)
    out = stack * (SCALE / safe)[:, None, None]
    out[peak <= 0] = 0.0
    return out


def robust_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The intensity window: percentiles of the given (head) voxel values."""
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:  # nearly constant head: fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def volume_robust(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5),
                  dtype: str = "float32", head_region: str = "robust",
                  affine: np.ndarray | None = None) -> np.ndarray:
    """Per-volume percentile window of the head voxels mapped to 0..255 and clipped, in ``dtype``.

    ``head_region`` (``convert.head_region``) says which voxels set the window
    (:mod:`strokeseg.data.head_region`; ``affine``, the volume's voxel-to-mm affine, lets the robust
    rule recognise the MNI grid and its voxel size). ``robust``: every voxel goes through the map.
    ``nonzero``: the window of the non-zero voxels, and only they are touched (background, exactly
    0, stays 0; about a fifth of an ATLAS volume is converted). The memory order of the volume is kept.
    """
    check_rule(head_region)
    volume = np.asarray(volume)                       # any numeric type
    order = "F" if volume.flags.f_contiguous and not volume.flags.c_contiguous else "C"
    if head_region == "robust":
        values = window_values(volume, head_region, affine)
        if values.size == 0:
            return np.zeros(volume.shape, dtype=dtype, order=order)
        lo, hi = robust_range(values, percentiles)
        scaled = np.subtract(volume, np.float32(lo), dtype=np.float32, order=order)
        scaled *= np.float32(SCALE / (hi - lo))
        return to_store_dtype(scaled, dtype)
    flat = volume.ravel(order=order)                  # a view for NIfTI's Fortran-ordered arrays
    head = np.flatnonzero(flat)
    out = np.zeros(volume.shape, dtype=dtype, order=order)
    if head.size == 0:
        return out
    values = flat[head].astype(np.float32)
    lo, hi = robust_range(values, percentiles)
    values -= np.float32(lo)
    values *= np.float32(SCALE / (hi - lo))
    out.ravel(order=order)[head] = to_store_dtype(values, dtype)
    return out


def to_store_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values clipped to the 0..255 scale in the store dtype; uint8 rounds half up (1/255 steps)."""
    clipped = np.clip(values, 0.0, SCALE).astype(np.float32, copy=False)
    if dtype == "uint8":
        clipped += np.float32(0.5)
    return clipped.astype(dtype, copy=False)


ZSCORE_RANGE = 4.0   # standard deviations each side of the mean that span 0..255


def zscore(volume: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Z-score of the non-zero voxels, ``[-ZSCORE_RANGE, ZSCORE_RANGE]`` onto 0..255; zeros stay 0."""
    volume = np.asarray(volume, dtype=np.float32)
    inside = volume != 0
    out = np.zeros(volume.shape, dtype=dtype)
    if not inside.any():
        return out
    values = volume[inside]
    mean, std = float(values.mean()), float(values.std())
    std = std if std > 0 else 1.0
    scaled = (values - np.float32(mean)) * np.float32(SCALE / (2 * ZSCORE_RANGE * std)) + np.float32(SCALE / 2)
    out[inside] = to_store_dtype(scaled, dtype)
    return out


def clipped_zscore(volume: np.ndarray, percentiles: tuple[float, float] = (10.0, 99.0),
                   dtype: str = "float32") -> np.ndarray:
    """The LGG U-Net's rule (docs/upstream-other-projects.md D.1 step 7): every voxel clipped to the
    ``[p_lo, p_hi]`` percentiles of the volume's voxels, then z-scored over all voxels (background
    included, so exact zeros do not stay 0), ``[-ZSCORE_RANGE, ZSCORE_RANGE]`` onto 0..255. D's
    rescaling to [0, 1] between the two steps is affine, so the z-score undoes it and it is left out."""
    volume = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(volume, percentiles)
    clipped = np.clip(volume, np.float32(lo), np.float32(hi))
    mean, std = float(clipped.mean()), float(clipped.std())
    std = std if std > 0 else 1.0       # a constant channel (D: std 0 -> 1)
    scaled = (clipped - np.float32(mean)) * np.float32(SCALE / (2 * ZSCORE_RANGE * std)) + np.float32(SCALE / 2)
    return to_store_dtype(scaled, dtype)


def window(volume: np.ndarray, lo: float, hi: float, dtype: str = "float32") -> np.ndarray:
    """``[lo, hi]`` (e.g. a Hounsfield window) linearly onto 0..255, clipped."""
    volume = np.asarray(volume, dtype=np.float32)
    return to_store_dtype((volume - np.float32(lo)) * np.float32(SCALE / (hi - lo)), dtype)


def channel_volume(volume: np.ndarray, kind: str, convert, affine: np.ndarray | None = None) -> np.ndarray | None:
    """One channel normalised once for all planes, in ``convert.store_dtype``; None for a T1 under
    ``slice_max``, whose normalisation depends on the plane's slicing (see the inference module).
    ``affine``: the volume's grid (the plan grid's affine), which a T1's ``convert.head_region``
    (robust) needs to recognise the MNI grid; training and inference pass the same one."""
    dtype = convert.store_dtype
    if kind == "t1":
        if convert.normalization == "volume_robust":
            return volume_robust(volume, convert.robust_percentiles, dtype, convert.head_region, affine)
        if convert.normalization == "slice_max":
            return None
        raise ValueError(f"unknown normalization {convert.normalization!r}")
    if kind == "mr":
        if convert.mr_normalization == "clip_zscore":
            return clipped_zscore(volume, convert.clip_percentiles, dtype)
        return zscore(volume, dtype)
    if kind == "ct":
        return window(volume, *convert.ct_window, dtype=dtype)
    if kind == "image8":
        return to_store_dtype(np.asarray(volume, dtype=np.float32), dtype)
    raise ValueError(f"unknown channel kind {kind!r}")

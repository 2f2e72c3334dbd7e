"""Which voxels are brain, to tell brain-containing slices from empty ones (normal-slice choice).

ATLAS v2.0 volumes are registered to MNI152NLin2009aSym on the template's own 197x233x189 grid,
so on that grid the template's brain mask (shipped in nilearn, nothing downloaded) is the brain
whether or not the T1 was skull-stripped. On any other grid we fall back to the head foreground:
voxels above 10 % of the 99th intensity percentile.
"""
from __future__ import annotations

import functools

import numpy as np

from strokeseg.data.planes import in_plane_axes

FOREGROUND_FRACTION = 0.10


@functools.lru_cache(maxsize=1)
def mni_brain_mask() -> tuple[np.ndarray, np.ndarray]:
    """(mask, affine) of the MNI152 2009 brain mask at 1 mm, loaded once per process."""
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=1)
    return np.asarray(img.dataobj) > 0, np.asarray(img.affine, dtype=float)


def _on_mni_grid(t1: np.ndarray, affine: np.ndarray) -> bool:
    mask, mni_affine = mni_brain_mask()
    return t1.shape == mask.shape and np.allclose(affine, mni_affine, atol=1e-3)


def brain_mask(t1: np.ndarray, affine: np.ndarray) -> np.ndarray:
    if _on_mni_grid(t1, affine):
        return mni_brain_mask()[0]
    threshold = FOREGROUND_FRACTION * np.percentile(t1, 99)
    return t1 > threshold


@functools.lru_cache(maxsize=3)
def _mni_brain_pixels(plane: str) -> np.ndarray:
    return np.count_nonzero(mni_brain_mask()[0], axis=in_plane_axes(plane)).astype(np.int64)


def brain_pixels_per_slice(t1: np.ndarray, affine: np.ndarray, planes) -> dict[str, np.ndarray]:
    """Brain pixels in every slice of each plane (the template's counts are computed once per
    process; elsewhere the head foreground is found once for all planes)."""
    if _on_mni_grid(t1, affine):
        return {plane: _mni_brain_pixels(plane) for plane in planes}
    mask = brain_mask(t1, affine)
    return {plane: np.count_nonzero(mask, axis=in_plane_axes(plane)).astype(np.int64) for plane in planes}

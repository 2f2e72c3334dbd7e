"""Which voxels are brain, to tell brain-containing slices from empty ones (normal-slice choice).

ATLAS v2.0 volumes are registered to MNI152NLin2009aSym on the template's own 197x233x189 grid,
so on that grid the template's brain mask (shipped in nilearn, nothing downloaded) is the brain
whether or not the T1 was skull-stripped. On any other grid we fall back to the head foreground:
voxels above 10 % of the 99th intensity percentile.
"""
from __future__ import annotations

import functools

import numpy as np

FOREGROUND_FRACTION = 0.10


@functools.lru_cache(maxsize=1)
def mni_brain_mask() -> tuple[np.ndarray, np.ndarray]:
    """(mask, affine) of the MNI152 2009 brain mask at 1 mm, loaded once per process."""
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=1)
    return np.asarray(img.dataobj) > 0, np.asarray(img.affine, dtype=float)


def brain_mask(t1: np.ndarray, affine: np.ndarray) -> np.ndarray:
    mask, mni_affine = mni_brain_mask()
    if t1.shape == mask.shape and np.allclose(affine, mni_affine, atol=1e-3):
        return mask
    threshold = FOREGROUND_FRACTION * np.percentile(t1, 99)
    return t1 > threshold

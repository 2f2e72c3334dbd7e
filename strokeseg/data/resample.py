"""Resampling between an input volume's own grid and the MNI152 grid the models were trained on.

The models see ATLAS v2.0's grid: MNI152NLin2009aSym, 197×233×189 voxels of 1 mm, RAS, with the
affine :data:`MNI_AFFINE` (the nilearn MNI152 2009 template's, checked by the tests, and the grid
of the synthetic cohort). A volume is "on the grid" when its shape is :data:`MNI_SHAPE` and its
affine equals :data:`MNI_AFFINE` within ``atol`` mm; it is then used as is, voxel for voxel.

Any other grid is resampled through world (scanner/MNI mm) coordinates, which assumes the volume
is already registered to MNI space: resampling is not registration.

Rules (``nibabel.processing.resample_from_to``, i.e. ``scipy.ndimage.affine_transform``, points
outside the source's field of view are 0):

- intensities (T1) onto the MNI grid: trilinear (``order=1``), float32. Linear rather than cubic
  splines: no overshoot (negative intensities or ringing at the skull edge that the per-volume
  percentile window would then see) and no spline prefilter over the whole volume.
- the fused mask back to the input grid (:func:`mask_to_grid`): the binary mask as float, trilinear,
  then ``≥ 0.5``. Nearest neighbour would move every boundary by up to half a voxel in a direction
  that depends on the grid offset; linear-then-0.5 places the boundary where the mask's
  partial-volume fraction crosses one half, and the same rule serves every fusion rule and the
  component removal (both act on the MNI-grid mask first).
- probability maps back to the input grid: trilinear, float32 (:func:`to_grid`).
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

MNI_SHAPE = (197, 233, 189)
# MNI152NLin2009aSym at 1 mm (ATLAS v2.0; nilearn's load_mni152_template(resolution=1).affine).
MNI_AFFINE = np.array([[1.0, 0.0, 0.0, -98.0],
                       [0.0, 1.0, 0.0, -134.0],
                       [0.0, 0.0, 1.0, -72.0],
                       [0.0, 0.0, 0.0, 1.0]])
MASK_LEVEL = 0.5


def on_grid(shape, affine, atol: float = 1e-3) -> bool:
    """Whether a volume of this shape and affine lies exactly on the MNI grid (used as is)."""
    affine = np.asarray(affine, dtype=np.float64)
    return (tuple(int(s) for s in shape[:3]) == MNI_SHAPE and affine.shape == (4, 4)
            and bool(np.allclose(affine, MNI_AFFINE, rtol=0.0, atol=atol)))


def to_grid(data: np.ndarray, affine, shape, target_affine, order: int = 1) -> np.ndarray:
    """``data`` (on the grid ``affine``) sampled on the grid (``shape``, ``target_affine``) as float32.

    Outside the source's field of view the result is 0. ``order`` is the spline order (1 =
    trilinear; see the module docstring for which data use which).
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    if data.dtype != np.float32:  # affine_transform keeps the input dtype: integers would truncate
        data = data.astype(np.float32)
    source = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    target = (tuple(int(s) for s in shape[:3]), np.asarray(target_affine, dtype=np.float64))
    out = resample_from_to(source, target, order=order, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)


def to_mni(data: np.ndarray, affine) -> np.ndarray:
    """An intensity volume resampled (trilinear, float32) onto the MNI grid."""
    return to_grid(data, affine, MNI_SHAPE, MNI_AFFINE, order=1)


def mask_to_grid(mask: np.ndarray, affine, shape, target_affine) -> np.ndarray:
    """A binary mask moved to another grid: the mask as float, trilinear, then ``≥ 0.5``; uint8 {0, 1}."""
    fraction = to_grid(np.asarray(mask) > 0, affine, shape, target_affine, order=1)
    return (fraction >= np.float32(MASK_LEVEL)).astype(np.uint8)


def from_mni_mask(mask: np.ndarray, shape, affine) -> np.ndarray:
    """The inverse of :func:`to_mni` for a mask: an MNI-grid mask back on the input's own grid."""
    return mask_to_grid(mask, MNI_AFFINE, shape, affine)


def from_mni(data: np.ndarray, shape, affine) -> np.ndarray:
    """An MNI-grid float map (e.g. a probability) back on the input's grid: trilinear, float32."""
    return to_grid(data, MNI_AFFINE, shape, affine, order=1)

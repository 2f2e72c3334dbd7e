"""Resampling between an input volume's own grid and the MNI152 grid the models were trained on.

The models see ATLAS v2.0's grid: MNI152NLin2009aSym, 197×233×189 voxels of 1 mm, RAS, with the
affine :data:`MNI_AFFINE` (the nilearn MNI152 2009 template's, checked by the tests, and the grid
of the synthetic cohort). A volume is "on the grid" when its shape is :data:`MNI_SHAPE` and its
affine equals :data:`MNI_AFFINE` within ``atol`` mm; it is then used as is, voxel for voxel.

Any other grid is resampled through world (scanner/MNI mm) coordinates, which assumes the volume
is already registered to MNI space: resampling is not registration.

Rules (``nibabel.processing.resample_from_to``, i.e. ``scipy.ndimage.affine_transform``, points
outside the source's field of view are 0; where the voxel map only reorders, flips and rescales axes,
as every grid plan's does, the same trilinear samples are taken as three 1-D interpolations):

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


def to_grid(data: np.ndarray, affine, shape, target_affine, order: int = 1, within=None) -> np.ndarray:
    """``data`` (on the grid ``affine``) sampled on the grid (``shape``, ``target_affine``) as float32.

    Outside the source's field of view the result is 0. ``order`` is the spline order (1 =
    trilinear; see the module docstring for which data use which). ``within``: (lo, hi) source voxel
    indices (inclusive) outside which ``data`` is 0, e.g. a mask's bounding box: only the target
    voxels that can see that box are interpolated, the others are 0, as they would be anyway.
    Without it the box is the whole source, so the target's padding beyond the source's field of
    view is never interpolated.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {data.shape}")
    shape = tuple(int(s) for s in shape[:3])
    affine, target_affine = np.asarray(affine, dtype=np.float64), np.asarray(target_affine, dtype=np.float64)
    box = _target_box(data.shape, affine, shape, target_affine, order, within)
    out = np.zeros(shape, dtype=np.float32)
    if box is None:
        return out
    if data.dtype != np.float32:  # affine_transform keeps the input dtype: integers would truncate
        data = data.astype(np.float32)
    start = np.array([b.start for b in box], dtype=np.float64)
    shift = np.eye(4)
    shift[:3, 3] = start
    box_shape, box_affine = tuple(b.stop - b.start for b in box), target_affine @ shift
    voxel_map = np.linalg.inv(affine) @ box_affine                 # target voxel -> source voxel
    axes = _axis_permutation(voxel_map[:3, :3])
    if order == 1 and axes is not None:
        out[box] = _separable_linear(data, voxel_map, axes, box_shape)
        return out
    source = nib.Nifti1Image(data, affine)
    out[box] = np.asarray(resample_from_to(source, (box_shape, box_affine), order=order, mode="constant",
                                           cval=0.0).dataobj, dtype=np.float32)
    return out


def labels_to_grid(labels: np.ndarray, affine, shape, target_affine) -> np.ndarray:
    """An integer label volume sampled on the grid (``shape``, ``target_affine``) by nearest neighbour,
    in its own dtype; 0 outside its field of view. An axis-aligned voxel map (reorders, flips and
    scales only) is one index look-up per axis; any other goes through ``affine_transform(order=0)``."""
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in shape[:3])
    voxel_map = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    axes = _axis_permutation(voxel_map[:3, :3])
    if axes is None:
        source = nib.Nifti1Image(labels, np.asarray(affine, dtype=np.float64))
        return np.asarray(resample_from_to(source, (shape, target_affine), order=0, mode="constant", cval=0).dataobj,
                          dtype=labels.dtype)
    index, inside = [], []
    for axis in range(3):
        source_axis = axes[axis]
        exact = voxel_map[source_axis, axis] * np.arange(shape[axis]) + voxel_map[source_axis, 3]
        # as affine_transform(order=0, mode="constant"): half-way points go up, and a point half a voxel
        # or more beyond the first or last voxel centre is outside
        position = np.floor(exact + 0.5)
        inside.append((exact > -0.5) & (exact < labels.shape[source_axis] - 0.5))
        index.append(np.clip(position, 0, labels.shape[source_axis] - 1).astype(np.int64))
    out = labels.transpose(axes)[np.ix_(*index)]
    out *= (inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]).astype(out.dtype)
    return out


def _axis_permutation(matrix: np.ndarray) -> list[int] | None:
    """For a voxel map that only reorders, flips and scales axes (a grid-plan subject: reoriented and
    resampled, never rotated), the source axis of each target axis; None for any other map."""
    nonzero = np.abs(matrix) > 1e-9 * np.abs(matrix).max()
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, j])[0]) for j in range(3)]


def _separable_linear(data: np.ndarray, voxel_map: np.ndarray, axes: list[int], shape) -> np.ndarray:
    """Trilinear sampling of an axis-aligned map as three 1-D linear interpolations, each along one
    axis (the same samples as ``affine_transform(order=1)``, in about half its time). A sample within
    1e-6 voxel of the source's edge counts as inside it: a plan grid's first voxel lies exactly on a
    subject's edge voxel, which floating-point rounding would otherwise put just outside."""
    out = data.transpose(axes)                                     # source axes in target order
    for axis in range(3):
        size = out.shape[axis]
        position = voxel_map[axes[axis], axis] * np.arange(shape[axis]) + voxel_map[axes[axis], 3]
        inside = (position > -1e-6) & (position < size - 1 + 1e-6)
        low = np.clip(np.floor(position).astype(np.int64), 0, size - 1)
        high = np.minimum(low + 1, size - 1)
        weight = np.where(inside, position - low, 0.0).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = -1
        first = np.take(out, low, axis=axis)
        out = first + (np.take(out, high, axis=axis) - first) * weight.reshape(view)
        out *= inside.reshape(view)
    return out


def _target_box(source_shape, affine, shape, target_affine, order: int, within) -> tuple[slice, ...] | None:
    """The target voxels whose sample can touch the source box (None: none can): the box's corners,
    widened by the interpolation's reach, mapped to target voxel indices."""
    lo, hi = (np.zeros(3), np.asarray(source_shape[:3], float) - 1) if within is None else \
        (np.asarray(within[0], float), np.asarray(within[1], float))
    reach = max(int(order), 1)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0] - reach, hi[0] + reach)
                        for y in (lo[1] - reach, hi[1] + reach) for z in (lo[2] - reach, hi[2] + reach)])
    voxels = (np.linalg.inv(target_affine) @ affine @ corners.T)[:3]
    first = np.maximum(np.floor(voxels.min(axis=1)).astype(int) - 1, 0)
    last = np.minimum(np.ceil(voxels.max(axis=1)).astype(int) + 1, np.asarray(shape) - 1)
    if np.any(last < first):
        return None
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last))


def to_mni(data: np.ndarray, affine) -> np.ndarray:
    """An intensity volume resampled (trilinear, float32) onto the MNI grid."""
    return to_grid(data, affine, MNI_SHAPE, MNI_AFFINE, order=1)


def mask_to_grid(mask: np.ndarray, affine, shape, target_affine) -> np.ndarray:
    """A binary mask moved to another grid: the mask as float, trilinear, then ``≥ 0.5``; uint8 {0, 1}.
    Only the target voxels near the lesions' bounding box are interpolated (lesions are small)."""
    binary = np.asarray(mask) > 0
    # per axis, the indices of the slices holding lesion voxels: their ends bound the lesions
    held = [np.flatnonzero(binary.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not held[0].size:
        return np.zeros(tuple(int(s) for s in shape[:3]), dtype=np.uint8)
    within = ([h[0] for h in held], [h[-1] for h in held])
    fraction = to_grid(binary, affine, shape, target_affine, order=1, within=within)
    return (fraction >= np.float32(MASK_LEVEL)).astype(np.uint8)


def from_mni_mask(mask: np.ndarray, shape, affine) -> np.ndarray:
    """The inverse of :func:`to_mni` for a mask: an MNI-grid mask back on the input's own grid."""
    return mask_to_grid(mask, MNI_AFFINE, shape, affine)


def from_mni(data: np.ndarray, shape, affine) -> np.ndarray:
    """An MNI-grid float map (e.g. a probability) back on the input's grid: trilinear, float32."""
    return to_grid(data, MNI_AFFINE, shape, affine, order=1)

"""Connected components of lesion masks, and per-subject and per-slice lesion statistics.

One convention everywhere: a voxel is lesion when ``mask > 0`` (upstream's binarisation);
``lesion_size_k`` is the size of the k-th LARGEST component (upstream used label-id order,
docs/upstream-raxnet.md §1.2), 0 when there are fewer than k; components beyond the
``N_LARGEST``-th still count in ``number_of_lesion``, ``sum_voxel`` and ``max_size``.
Subjects use 26-connectivity in 3-D; slices use 8-connectivity within the slice. Slice axes come
from :mod:`strokeseg.data.planes` (axial ``vol[:, :, k]``, sagittal ``vol[k]``, coronal ``vol[:, k, :]``).

All work is done on the bounding box of the lesion, and the per-slice statistics of a plane come
from ONE labelling of the volume with an in-plane structure (no connection across slices), so a
plane costs about as much as one 3-D labelling of the lesion's bounding box.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from strokeseg.data.planes import AXIS, check_plane, in_plane_axes

N_LARGEST = 10
LESION_SIZE_COLUMNS = tuple(f"lesion_size_{k}" for k in range(1, N_LARGEST + 1))
SUBJECT_COLUMNS = ("number_of_lesion", "sum_voxel", "max_size") + LESION_SIZE_COLUMNS
SLICE_COLUMNS = ("slice",) + SUBJECT_COLUMNS

# connectivity -> (ndim, rank for ndimage.generate_binary_structure)
_CONNECTIVITY = {(3, 6): 1, (3, 18): 2, (3, 26): 3, (2, 4): 1, (2, 8): 2}


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask > 0


def crop(binary: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The lesion's bounding box and its start index per axis; None for an empty mask."""
    # NIfTI data arrive Fortran-ordered: ravel in memory order, or every call copies the volume.
    order = "F" if binary.flags.f_contiguous and not binary.flags.c_contiguous else "C"
    flat = np.flatnonzero(binary.ravel(order=order))  # much faster than np.nonzero on a sparse volume
    if flat.size == 0:
        return None
    coords = np.unravel_index(flat, binary.shape, order=order)
    starts = tuple(int(c.min()) for c in coords)
    box = tuple(slice(s, int(c.max()) + 1) for s, c in zip(starts, coords))
    return binary[box], starts


def structure(ndim: int, connectivity: int) -> np.ndarray:
    """The ``ndimage.label`` structuring element for 6/18/26 (3-D) or 4/8 (2-D) connectivity."""
    try:
        rank = _CONNECTIVITY[(ndim, connectivity)]
    except KeyError:
        raise ValueError(f"connectivity {connectivity} is not valid for {ndim}-D masks "
                         "(3-D: 6, 18, 26; 2-D: 4, 8)") from None
    return ndimage.generate_binary_structure(ndim, rank)


def component_sizes(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Sizes (voxels) of the connected components of ``mask > 0``, sorted descending (int64)."""
    binary = _binary(mask)
    footprint = structure(binary.ndim, connectivity)
    cropped = crop(binary)
    if cropped is None:
        return np.zeros(0, dtype=np.int64)
    labels, n = ndimage.label(cropped[0], structure=footprint)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    return np.sort(sizes)[::-1]


LESION_TABLE_COLUMNS = ("lesion", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm")


def lesion_table(mask: np.ndarray, affine: np.ndarray, connectivity: int) -> pd.DataFrame:
    """One row per connected component of ``mask > 0``, largest first (:data:`LESION_TABLE_COLUMNS`):
    its voxels, its volume in mL (the affine's voxel size) and its centroid in world millimetres
    (the affine applied to the mean voxel index)."""
    binary = _binary(mask)
    cropped = crop(binary)
    if cropped is None:
        return pd.DataFrame(columns=list(LESION_TABLE_COLUMNS))
    labels, n = ndimage.label(cropped[0], structure=structure(binary.ndim, connectivity))
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index).astype(np.int64)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, index), dtype=np.float64)
    centres = centres.reshape(n, binary.ndim) + np.asarray(cropped[1], dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    world = centres @ affine[:3, :3].T + affine[:3, 3]
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    order = np.argsort(-sizes, kind="stable")
    return pd.DataFrame({"lesion": np.arange(1, n + 1), "voxels": sizes[order], "volume_ml": sizes[order] * voxel_ml,
                         "centroid_x_mm": world[order, 0], "centroid_y_mm": world[order, 1],
                         "centroid_z_mm": world[order, 2]}, columns=list(LESION_TABLE_COLUMNS))


def subject_statistics(mask: np.ndarray) -> dict:
    """3-D lesion statistics at 26-connectivity.

    Keys: number_of_lesion, sum_voxel, max_size, lesion_size_1..lesion_size_10 (python ints).
    """
    binary = _binary(mask)
    if binary.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got shape {binary.shape}")
    return size_statistics(component_sizes(binary, 26))


def size_statistics(sizes: np.ndarray) -> dict:
    """:func:`subject_statistics` from the sizes of the mask's 26-connected components, largest first
    (for a caller that has labelled the mask already)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    top = np.zeros(N_LARGEST, dtype=np.int64)
    top[: min(N_LARGEST, sizes.size)] = sizes[:N_LARGEST]
    stats = {
        "number_of_lesion": int(sizes.size),
        "sum_voxel": int(sizes.sum()),
        "max_size": int(sizes[0]) if sizes.size else 0,
    }
    stats.update({name: int(v) for name, v in zip(LESION_SIZE_COLUMNS, top)})
    return stats


def _in_plane_structure(axis: int) -> np.ndarray:
    """3x3x3 structure: 8-connectivity in the two in-plane axes, nothing across slices."""
    footprint = np.zeros((3, 3, 3), dtype=bool)
    index = [slice(None)] * 3
    index[axis] = 1
    footprint[tuple(index)] = True
    return footprint


def _empty_slice_frame() -> pd.DataFrame:
    return pd.DataFrame({name: np.zeros(0, dtype=np.int64) for name in SLICE_COLUMNS})


def slice_statistics(mask: np.ndarray, plane: str) -> pd.DataFrame:
    """Per-slice lesion statistics of one plane, 8-connectivity within each slice.

    One row per slice that contains lesion, in slice order, columns: slice, number_of_lesion,
    sum_voxel, max_size, lesion_size_1..10 (int64). An empty mask gives an empty frame.
    """
    binary = _binary(mask)
    if binary.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got shape {binary.shape}")
    axis = AXIS[check_plane(plane)]
    cropped = crop(binary)
    if cropped is None:
        return _empty_slice_frame()
    box, starts = cropped
    labels, n = ndimage.label(box, structure=_in_plane_structure(axis))
    coords = np.nonzero(labels)
    label_of_voxel = labels[coords]
    sizes = np.bincount(label_of_voxel, minlength=n + 1)[1:]
    slice_of = np.empty(n + 1, dtype=np.int64)
    slice_of[label_of_voxel] = coords[axis]          # a component lies in one slice
    slice_of = slice_of[1:]

    # components ordered by slice, then by size (largest first); rank within the slice
    order = np.lexsort((-sizes, slice_of))
    slice_sorted, size_sorted = slice_of[order], sizes[order]
    first = np.r_[True, slice_sorted[1:] != slice_sorted[:-1]]
    group_start = np.flatnonzero(first)
    row = np.cumsum(first) - 1
    rank = np.arange(n) - group_start[row]

    n_rows = group_start.size
    counts = np.diff(np.r_[group_start, n])
    table = np.zeros((n_rows, N_LARGEST), dtype=np.int64)
    keep = rank < N_LARGEST
    table[row[keep], rank[keep]] = size_sorted[keep]
    frame = {
        "slice": slice_sorted[group_start] + starts[axis],
        "number_of_lesion": counts.astype(np.int64),
        "sum_voxel": np.add.reduceat(size_sorted, group_start).astype(np.int64),
        "max_size": size_sorted[group_start].astype(np.int64),
    }
    frame.update({name: table[:, k] for k, name in enumerate(LESION_SIZE_COLUMNS)})
    return pd.DataFrame(frame)


def lesion_pixels_per_slice(mask: np.ndarray, plane: str) -> np.ndarray:
    """Lesion pixel count of every slice of the plane (int64, length = number of slices)."""
    binary = _binary(mask)
    if binary.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got shape {binary.shape}")
    axis = AXIS[check_plane(plane)]
    counts = np.zeros(binary.shape[axis], dtype=np.int64)
    cropped = crop(binary)
    if cropped is None:
        return counts
    box, starts = cropped
    per_slice = np.count_nonzero(box, axis=in_plane_axes(plane))
    counts[starts[axis]: starts[axis] + per_slice.size] = per_slice
    return counts

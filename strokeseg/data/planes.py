"""The only module that knows axis order: volume -> slices, canvas padding, and the exact inverse.

Arrays use the NIfTI voxel order ``[x, y, z]`` (docs/architecture.md): sagittal slices run along x,
coronal along y, axial along z. A slice keeps the two remaining axes in their volume order,
without transposition, exactly as upstream (docs/upstream-raxnet.md §3):
axial ``vol[:, :, k]`` is (197, 233), sagittal ``vol[k]`` is (233, 189), coronal ``vol[:, k]``
is (197, 189).

Slices are zero-padded into canvases whose sides are multiples of 16. On the ATLAS grid the
canvases and offsets are upstream's (§6): axial 208x240, sagittal 240x208, coronal 208x208. Any
other grid is padded to the next multiple of ``multiple`` with the extra split evenly (the odd pixel
after the slice), and the offsets are stored so that cropping is the exact inverse.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeseg.config import PLANES

AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
ATLAS_SHAPE = (197, 233, 189)

# Upstream placements on the ATLAS grid: canvas (H, W) and the slice's top-left corner (row, col).
_ATLAS_CANVASES = {
    "axial": ((208, 240), (6, 3)),
    "sagittal": ((240, 208), (3, 9)),
    "coronal": ((208, 208), (5, 9)),
}


@dataclass(frozen=True)
class Canvas:
    """Where a plane's slices sit inside the padded canvas the models see."""

    plane: str
    slice_shape: tuple[int, int]
    shape: tuple[int, int]
    offset: tuple[int, int]

    @property
    def region(self) -> tuple[slice, slice]:
        (r, c), (h, w) = self.offset, self.slice_shape
        return slice(r, r + h), slice(c, c + w)

    def pad(self, slices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Zero-pad one slice (h, w) or a stack (..., h, w) into the canvas."""
        slices = np.asarray(slices)
        if slices.shape[-2:] != self.slice_shape:
            raise ValueError(f"{self.plane}: slice shape {slices.shape[-2:]} != {self.slice_shape}")
        if out is None:
            out = np.zeros(slices.shape[:-2] + self.shape, dtype=slices.dtype)
        else:
            out[...] = 0
        rows, cols = self.region
        out[..., rows, cols] = slices
        return out

    def crop(self, canvases: np.ndarray) -> np.ndarray:
        """The exact inverse of :meth:`pad` for (..., H, W) arrays (trailing channels not allowed)."""
        canvases = np.asarray(canvases)
        if canvases.shape[-2:] != self.shape:
            raise ValueError(f"{self.plane}: canvas shape {canvases.shape[-2:]} != {self.shape}")
        rows, cols = self.region
        return canvases[..., rows, cols]

    def to_dict(self) -> dict:
        return {"plane": self.plane, "slice_shape": list(self.slice_shape),
                "shape": list(self.shape), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, data: dict) -> "Canvas":
        return cls(data["plane"], tuple(data["slice_shape"]), tuple(data["shape"]), tuple(data["offset"]))


def check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")
    return plane


def n_slices(volume_shape: tuple[int, ...], plane: str) -> int:
    return int(volume_shape[AXIS[check_plane(plane)]])


def slice_shape(volume_shape: tuple[int, ...], plane: str) -> tuple[int, int]:
    axis = AXIS[check_plane(plane)]
    rest = [int(s) for i, s in enumerate(volume_shape[:3]) if i != axis]
    return rest[0], rest[1]


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    return np.take(volume, index, axis=AXIS[check_plane(plane)])


def to_stack(volume: np.ndarray, plane: str) -> np.ndarray:
    """All slices of a plane as a (n_slices, h, w) view of the volume (no copy)."""
    return np.moveaxis(volume, AXIS[check_plane(plane)], 0)


def from_stack(stack: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`to_stack`: a (n_slices, h, w) stack back to the [x, y, z] volume."""
    return np.moveaxis(stack, 0, AXIS[check_plane(plane)])


def in_plane_axes(plane: str) -> tuple[int, int]:
    axis = AXIS[check_plane(plane)]
    a, b = (i for i in range(3) if i != axis)
    return a, b


def canvas_for(volume_shape: tuple[int, ...], plane: str, multiple: int = 16) -> Canvas:
    """The canvas of a plane for volumes of this shape (upstream's on the ATLAS grid)."""
    shape2d = slice_shape(volume_shape, plane)
    if tuple(volume_shape[:3]) == ATLAS_SHAPE and multiple == 16:
        canvas, offset = _ATLAS_CANVASES[plane]
        return Canvas(plane, shape2d, canvas, offset)
    canvas = tuple(-(-s // multiple) * multiple for s in shape2d)
    offset = tuple((c - s) // 2 for c, s in zip(canvas, shape2d))
    return Canvas(plane, shape2d, canvas, offset)


def neighbour_indices(index, count: int, channels: int) -> np.ndarray:
    """Slice indices used as channels around ``index`` (scalar or array): offsets -(C-1)//2 .. C//2.

    C=1 -> [k]; C=3 -> [k-1, k, k+1] (LCNN); C=4 -> [k-1, k, k+1, k+2] (D-UNet). Near the
    edge of the volume the nearest existing slice is repeated. Shape: index.shape + (C,).
    """
    offsets = np.arange(-((channels - 1) // 2), channels // 2 + 1)
    return np.clip(np.asarray(index)[..., None] + offsets, 0, count - 1)


def left_right_axis(plane: str) -> int | None:
    """The canvas axis (0 = rows, 1 = columns) that runs left–right (the volume's x axis), or
    None for sagittal slices, which have no left–right direction to mirror."""
    axes = in_plane_axes(plane)
    return axes.index(0) if 0 in axes else None

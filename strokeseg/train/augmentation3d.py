"""Training-time 3-D augmentation of patches (NumPy / SciPy): geometry applied identically to images and
mask, then (:class:`PatchAugmentation`, when ``training.intensity_augment``) nnU-Net's intensity
transforms of the images alone (:mod:`strokeseg.train.intensity_augmentation`; every modality
draws its own, as nnU-Net's channels), in nnU-Net's order: spatial first.

Geometry (:class:`Augmentation3D`), per patch, in this order:

1. a flip along each axis of ``flip_axes`` (default all three) with probability ``flip_probability``
   (0.5), done by index reversal, so it is exact and never resamples;
2. one rotation by an angle drawn from ±``max_rotation_degrees`` (15°) about **one** axis chosen
   uniformly among the three, and one isotropic zoom by a factor drawn from [1 − ``max_scaling``,
   1 + ``max_scaling``] (0.1), both about the patch centre, as ONE matrix that
   ``scipy.ndimage.affine_transform`` applies to every image channel (trilinear, order 1) and to
   the mask (nearest neighbour, order 0, so it stays {0, 1}); what comes from outside the patch is
   0. A zoom factor s > 1 enlarges (an output voxel at distance d from the centre reads the input at
   d / s), as in the 2-D path. The warp is skipped when it is the identity (no rotation, no zoom).

Where this differs from its references, and why:

- ISLES'22 upstream (C.2) flips only its H and W axes and neither rotates nor zooms; for intensity it
  scales channels, blurs and adds noise, where this project uses nnU-Net's intensity set instead
  (the same one as the 2-D path, :class:`PatchAugmentation`). nnU-Net mirrors every axis and
  rotates about each axis independently (±30°); one small rotation about a random axis keeps the
  2-D path's single rotation per sample and its 15° order of magnitude.
- The 2-D path (:mod:`strokeseg.train.augmentation`) flips left–right only, because on registered
  anatomy a front–back or top–bottom mirror is not anatomy; ``flip_axes=(0,)`` gives that rule
  on the plan grid, whose axis 0 is x (left–right). All three is the nnU-Net default the 3-D
  path starts from.

Every draw is stateless: a transform depends only on its seed words (for training (seed, epoch,
step, slot), :func:`augment_batch`), so a resumed run augments exactly as the uninterrupted one.
Each patch draws the same five values in the same order whatever the settings; the intensity
transforms draw from the same words through a stream of their own.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeseg.train.intensity_augmentation import IntensityAugmentation

_TAG = zlib.crc32(b"augmentation3d")   # keeps these streams apart from the patch sampler's


@dataclass(frozen=True)
class Transform3D:
    """One patch's draw: which axes to flip, then the rotation (axis, radians) and zoom factor."""

    flips: tuple[bool, bool, bool]
    axis: int
    angle: float
    scale: float

    @property
    def warps(self) -> bool:
        return self.angle != 0.0 or self.scale != 1.0

    def matrix(self) -> np.ndarray:
        """3x3 map from output to input coordinates about the centre: rotation over scale."""
        i, j = [a for a in range(3) if a != self.axis]
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        rotation = np.eye(3)
        rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = cos, -sin, sin, cos
        return rotation / self.scale


@dataclass(frozen=True)
class Augmentation3D:
    flip_probability: float = 0.5
    max_rotation_degrees: float = 15.0
    max_scaling: float = 0.1
    flip_axes: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], not {self.flip_probability}")
        if not 0.0 <= self.max_scaling < 1.0:
            raise ValueError(f"max_scaling must be in [0, 1), not {self.max_scaling}")
        if self.max_rotation_degrees < 0:
            raise ValueError(f"max_rotation_degrees must be >= 0, not {self.max_rotation_degrees}")
        if not set(self.flip_axes) <= {0, 1, 2}:
            raise ValueError(f"flip_axes must be among 0, 1, 2, not {self.flip_axes}")

    def draw(self, seed: int | Sequence[int]) -> Transform3D:
        """The transform of one patch; the same seed words give the same transform."""
        rng = augmentation_rng(seed)
        flip_draws, axis = rng.random(3), int(rng.integers(3))
        angle_draw, scale_draw = rng.uniform(-1.0, 1.0, size=2)
        flips = tuple(bool(a in self.flip_axes and flip_draws[a] < self.flip_probability) for a in range(3))
        return Transform3D(flips, axis,  # type: ignore[arg-type]
                           float(angle_draw) * math.radians(self.max_rotation_degrees),
                           1.0 + float(scale_draw) * self.max_scaling)

    def __call__(self, images: np.ndarray, mask: np.ndarray,
                 seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Augment one patch: images (d, h, w, M), mask (d, h, w) or (d, h, w, 1); returns float32
        images and a mask of the mask's shape and dtype, values kept in {0, 1}."""
        return apply(self.draw(seed), images, mask)


@dataclass(frozen=True)
class PatchAugmentation:
    """A training patch's augmentation: the geometry (if any), then the intensity transforms (if any)
    from the same seed words; the mask only ever sees the geometry."""

    spatial: Augmentation3D | None = None
    intensity: IntensityAugmentation | None = None

    def __call__(self, images: np.ndarray, mask: np.ndarray,
                 seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        if self.spatial is not None:
            images, mask = self.spatial(images, mask, seed)
        if self.intensity is not None:
            images = self.intensity(images, seed)      # one draw group per modality
        return images, mask


def augmentation_rng(seed: int | Sequence[int]) -> np.random.Generator:
    """The generator of one patch. The word count is mixed in because SeedSequence pads short
    entropy with zeros: (5,) and (5, 0) would otherwise be the same stream."""
    words = [int(w) for w in np.ravel(seed)]
    return np.random.default_rng(np.random.SeedSequence([_TAG, len(words), *words]))


def apply(transform: Transform3D, images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one drawn transform to a patch (see :meth:`Augmentation3D.__call__`)."""
    images = np.asarray(images, dtype=np.float32)
    mask = np.asarray(mask)
    if images.ndim != 4 or mask.shape[:3] != images.shape[:3] or mask.ndim not in (3, 4):
        raise ValueError(f"images {images.shape} and mask {mask.shape} are not (d, h, w, M) and (d, h, w[, 1])")
    flipped = tuple(a for a, flip in enumerate(transform.flips) if flip)
    if flipped:
        images, mask = np.flip(images, axis=flipped), np.flip(mask, axis=flipped)
    if transform.warps:
        matrix = transform.matrix()
        centre = (np.array(images.shape[:3], dtype=np.float64) - 1.0) / 2.0
        offset = centre - matrix @ centre   # input = matrix · (output − centre) + centre
        images = np.stack([_warp(images[..., m], matrix, offset, 1) for m in range(images.shape[-1])], axis=-1)
        warped = _warp(mask.reshape(mask.shape[:3]), matrix, offset, 0)
        mask = warped.reshape(mask.shape)
    return np.ascontiguousarray(images), np.ascontiguousarray(mask)


def _warp(volume: np.ndarray, matrix: np.ndarray, offset: np.ndarray, order: int) -> np.ndarray:
    # order <= 1 needs no spline prefilter; 'constant' fills what maps outside the patch with 0.
    return ndimage.affine_transform(volume, matrix, offset=offset, order=order, mode="constant", cval=0.0,
                                    prefilter=False)


def augment_batch(augmentation: Augmentation3D | PatchAugmentation, images: np.ndarray, masks: np.ndarray,
                  seed: int, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Augment a batch (images (B, d, h, w, M), masks (B, d, h, w, 1)), slot b with seed words
    (seed, epoch, step, b): stateless, so any slot of any batch can be recomputed alone."""
    out_images = np.empty(images.shape, dtype=np.float32)
    out_masks = np.empty_like(masks)
    for b in range(len(images)):
        out_images[b], out_masks[b] = augmentation(images[b], masks[b], (seed, epoch, step, b))
    return out_images, out_masks

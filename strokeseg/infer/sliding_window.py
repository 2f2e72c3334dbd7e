"""Whole-volume inference of a 3-D patch model: Gaussian-weighted sliding windows (nnU-Net's rule).

A 3-D model sees patches, not volumes. :func:`sliding_window_probability` covers the volume with
windows of the patch size and fuses their predictions:

- **Window starts** (:func:`window_starts`), per axis: as few windows as keep the step at most
  ``step`` × the patch (half by default), spread evenly from 0 to ``size - patch`` and rounded, so
  the first and last windows touch the volume's ends (110 voxels, patch 64 → 0, 23, 46). A volume
  smaller than the patch along an axis is zero-padded to the patch, centred, and cropped back
  exactly.
- **Importance map** (:func:`gaussian_importance`): a separable Gaussian with σ = patch / 8 per axis,
  centred on the patch's middle (symmetric, also for even sizes and anisotropic patches), scaled
  to a maximum of 1. It is never 0, so every voxel a window covers gets weight: a window's borders,
  where the model sees the least context, count least.
- **Fusion**: the windows' sigmoid probabilities are turned into logits (clipped at 1e-7 from 0
  and 1), accumulated weighted by the importance map, divided by the summed weights and turned back
  into probabilities, as nnU-Net fuses logits. The ISLES'22 project this path is ported from
  averaged probabilities with equal weights (docs/upstream-other-projects.md C.6): its window
  borders weigh as much as their centres.
- **Mirror test-time augmentation** (``mirror_axes``): every window is also predicted mirrored
  along each combination of the given axes and mirrored back; all are averaged (in logits).

Accumulators are two float32 arrays of the volume's size; each window adds into its own region,
so memory is the volume, the two accumulators and one batch of windows. ``predict`` maps float32
windows (n, d, h, w, M) to probabilities (n, d, h, w, 1) and never sees more than ``batch_size``.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
SIGMA_FRACTION = 1.0 / 8.0     # σ of the importance map per axis, as a fraction of the patch
_CLIP = 1e-7                   # probabilities are kept this far from 0 and 1 before their logit


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Start indices of the windows along one axis (see the module docstring)."""
    if patch < 1 or size < 1:
        raise ValueError(f"size and patch must be >= 1, got {size} and {patch}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if size <= patch:
        return [0]
    count = math.ceil((size - patch) / (patch * step)) + 1
    spacing = (size - patch) / (count - 1)
    return [int(round(spacing * i)) for i in range(count)]


def gaussian_importance(patch: tuple[int, ...]) -> np.ndarray:
    """float32 weights of one window (shape ``patch``): a separable Gaussian, maximum 1, no zeros."""
    weights = np.ones((), dtype=np.float64)
    for size in patch:
        position = np.arange(size) - (size - 1) / 2.0
        axis = np.exp(-0.5 * (position / max(size * SIGMA_FRACTION, 1e-6)) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights /= weights.max()
    return weights.astype(np.float32)


def _as_channels_last(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) or (M, X, Y, Z) volume -> (X, Y, Z, M) float32 (the models' channels-last layout)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 3:
        return volume[..., None]
    if volume.ndim == 4:
        return np.moveaxis(volume, 0, -1)
    raise ValueError(f"expected a (X, Y, Z) or (M, X, Y, Z) volume, got shape {volume.shape}")


def _padding(shape: tuple[int, ...], patch: tuple[int, ...]) -> list[tuple[int, int]]:
    """Zero padding that brings every axis to at least the patch, split evenly (the odd voxel after)."""
    pads = []
    for size, want in zip(shape, patch):
        extra = max(want - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    return pads


def _logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(probability, _CLIP, 1.0 - _CLIP)
    return np.log(p) - np.log1p(-p)


def sliding_window_probability(predict: Predict, volume: np.ndarray, patch: tuple[int, int, int],
                               batch_size: int = 2, step: float = 0.5,
                               mirror_axes: tuple[int, ...] = ()) -> np.ndarray:
    """float32 probability volume ``[x, y, z]`` of a 3-D patch model over a whole volume.

    ``volume``: one channel (X, Y, Z) or M channels (M, X, Y, Z), normalised as the model was
    trained; ``patch``: the model's (d, h, w) along x, y, z; ``mirror_axes``: spatial axes (0, 1,
    2) to mirror for test-time augmentation (every combination, the plain window included).
    """
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch must be three sizes >= 1, got {patch}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if any(a not in (0, 1, 2) for a in mirror_axes):
        raise ValueError(f"mirror_axes must be among 0, 1, 2, got {mirror_axes}")
    image = _as_channels_last(volume)
    shape = image.shape[:3]
    pads = _padding(shape, patch)
    image = np.pad(image, pads + [(0, 0)])
    padded = image.shape[:3]
    importance = gaussian_importance(patch)
    logits = np.zeros(padded, dtype=np.float32)
    weights = np.zeros(padded, dtype=np.float32)
    corners = list(itertools.product(*(window_starts(s, p, step) for s, p in zip(padded, patch))))
    flips = [axes for k in range(len(mirror_axes) + 1) for axes in itertools.combinations(mirror_axes, k)]
    for first in range(0, len(corners), int(batch_size)):
        chunk = corners[first:first + int(batch_size)]
        windows = np.stack([image[x:x + patch[0], y:y + patch[1], z:z + patch[2]] for x, y, z in chunk])
        total = np.zeros((len(chunk), *patch), dtype=np.float32)
        for axes in flips:
            spatial = tuple(a + 1 for a in axes)                # batch axis first
            seen = np.flip(windows, spatial) if axes else windows
            out = _checked(predict(np.ascontiguousarray(seen)), len(chunk), patch)
            total += _logit(np.flip(out, spatial) if axes else out)
        total /= np.float32(len(flips))
        for (x, y, z), window in zip(chunk, total):
            region = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
            logits[region] += window * importance
            weights[region] += importance
    logits /= weights                                           # every voxel lies in a window: weights > 0
    probability = 1.0 / (1.0 + np.exp(-logits))
    crop = tuple(slice(before, before + size) for (before, _), size in zip(pads, shape))
    return np.ascontiguousarray(probability[crop], dtype=np.float32)


def _checked(out, n: int, patch: tuple[int, int, int]) -> np.ndarray:
    """The model's (n, d, h, w, 1) probabilities as float32 (n, d, h, w)."""
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 5 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.shape != (n, *patch):
        raise ValueError(f"predict returned shape {out.shape} for {n} windows of {patch}; expected (n, d, h, w, 1)")
    return out

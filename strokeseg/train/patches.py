"""Patch sampling for the 3-D training path: which subject and which box each slot of a batch reads.

Rules (nnU-Net's, with the differences named):

- **Subjects**: each slot's subject is drawn uniformly *with replacement* from ``subjects`` (store
  positions). nnU-Net draws the batch's cases the same way; ISLES'22 upstream (C.2) instead draws
  a fixed 4 patches per volume per epoch.
- **Forced foreground**: the first ``forced_count(B)`` = round(B / 3) slots of every batch are forced
  to hold lesion (nnU-Net's ``oversample_foreground_percent`` = 0.33, but nnU-Net forces the *last*
  slots; the order does not matter to training, the first ones are simply easier to test and read).
  Rounding is half up, floor(B / 3 + 1/2), computed exactly (B / 3 is never a half for an integer B,
  so half up and half to even agree): B = 1 → 0, 2 → 1, 3 → 1, 4 → 1, 5 → 2, 6 → 2, 7 → 2.
  ISLES'22 upstream instead forces each patch with probability 0.7 (C.2).
- A forced slot is **centred on one lesion voxel** drawn uniformly from the subject's precomputed
  list (capped at 10,000 per subject, :mod:`strokeseg.data.volume_stores`): corner = voxel −
  patch // 2, then clamped into the corner range below, which keeps the voxel inside the patch (as
  ISLES'22 upstream clamps; nnU-Net lets the box reach into its padding instead). A subject without
  lesion voxels **falls back to a uniform patch** for that slot, so a batch may hold fewer forced
  patches than ``forced_count`` when such subjects are drawn (nnU-Net does the same).
- **Uniform** slots draw the corner uniformly among the integers [0, S − p] on each axis, so the
  patch lies inside the volume. Where the volume is smaller than the patch along an axis (S < p) the
  corner is fixed at −((p − S) // 2): the volume is centred in the patch and the rest is zero padding
  (the store's reads pad with 0). Forced slots use the same fixed corner on such axes.

Every draw is stateless in (seed, epoch, step): the generator is seeded from those words (and a tag
for this purpose, so the same words feed the augmentation without correlation), and each batch
draws a fixed number of values whatever the subjects hold, so a resumed run samples exactly the
batches the uninterrupted run would have.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import numpy as np

from strokeseg.config import derive_seed

FOREGROUND_FRACTION = Fraction(1, 3)   # nnU-Net's oversample_foreground_percent 0.33, exactly a third

Corner = tuple[int, int, int]


class PatchSource(Protocol):
    """What the sampler needs of a store: the shared volume shape and each subject's lesion voxels."""

    shape: tuple[int, int, int]

    def foreground(self, position: int) -> np.ndarray: ...


@dataclass(frozen=True)
class PatchPlan:
    """One batch's plan: ``draws[i] = (position, corner)`` of slot i, the patch size along (X, Y, Z),
    and which slots were asked to hold foreground (the first ``forced`` slots; ``centred`` says which
    of them did get a lesion-centred patch, False where the subject had no lesion voxel)."""

    patch: tuple[int, int, int]
    draws: tuple[tuple[int, Corner], ...]
    forced: int
    centred: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.draws)

    def __iter__(self) -> Iterator[tuple[int, Corner]]:
        return iter(self.draws)

    def __getitem__(self, slot: int) -> tuple[int, Corner]:
        return self.draws[slot]

    @property
    def positions(self) -> list[int]:
        return [position for position, _ in self.draws]


def forced_count(batch_size: int, fraction: Fraction | float = FOREGROUND_FRACTION) -> int:
    """How many of a batch's slots are forced to hold foreground: round(B · fraction), half up."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    return math.floor(Fraction(batch_size) * Fraction(fraction) + Fraction(1, 2))


def batch_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The sampler's generator for one batch. The tag word comes first: SeedSequence pads short
    entropy with zeros, so untagged (seed, epoch, step) would equal (seed, epoch, step, 0) elsewhere."""
    return np.random.default_rng(np.random.SeedSequence([derive_seed(seed, "patches3d"), epoch, step]))


def sample_batch(source: PatchSource, subjects: Sequence[int], patch: Sequence[int], batch_size: int,
                 seed: int, epoch: int, step: int,
                 foreground_fraction: Fraction | float = FOREGROUND_FRACTION) -> PatchPlan:
    """The plan of batch ``step`` of ``epoch``: B (position, corner) pairs, the first
    ``forced_count(B)`` centred on lesion voxels where the subject has any, the rest uniform."""
    size = _patch_size(patch)
    if not len(subjects):
        raise ValueError("no subjects to sample patches from")
    n_forced = forced_count(batch_size, foreground_fraction)
    rng = batch_rng(seed, epoch, step)
    # A fixed number of draws per batch, in a fixed order, whatever the subjects hold.
    picks = rng.integers(len(subjects), size=batch_size)
    voxel_draws = rng.random(batch_size)
    corner_draws = rng.random((batch_size, 3))
    shape = tuple(int(s) for s in source.shape)
    draws, centred = [], []
    for slot in range(batch_size):
        position = int(subjects[int(picks[slot])])
        corner = None
        if slot < n_forced:
            corner = foreground_corner(source.foreground(position), voxel_draws[slot], shape, size)
            centred.append(corner is not None)
        if corner is None:
            corner = uniform_corner(corner_draws[slot], shape, size)
        draws.append((position, corner))
    return PatchPlan(size, tuple(draws), n_forced, tuple(centred))


def corner_range(shape: Sequence[int], patch: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Per axis the inclusive (lowest, highest) corner: (0, S − p), or the centring corner twice
    where the volume is smaller than the patch."""
    ranges = []
    for s, p in zip(shape, patch):
        ranges.append((0, s - p) if s >= p else (-((p - s) // 2),) * 2)
    return tuple(ranges)


def uniform_corner(draws: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> Corner:
    """The corner at which three uniform [0, 1) draws fall among the allowed integer corners."""
    corner = []
    for u, (lo, hi) in zip(draws, corner_range(shape, patch)):
        corner.append(lo + min(int(u * (hi - lo + 1)), hi - lo))   # min: guards u * n rounding up to n
    return tuple(corner)  # type: ignore[return-value]


def foreground_corner(voxels: np.ndarray, draw: float, shape: Sequence[int],
                      patch: Sequence[int]) -> Corner | None:
    """The corner centring the patch on the voxel a uniform [0, 1) draw picks, clamped into the
    allowed range (the voxel stays inside); None when the subject has no lesion voxel."""
    if not len(voxels):
        return None
    voxel = voxels[min(int(draw * len(voxels)), len(voxels) - 1)]
    corner = []
    for v, p, (lo, hi) in zip(voxel, patch, corner_range(shape, patch)):
        corner.append(int(np.clip(int(v) - p // 2, lo, hi)))
    return tuple(corner)  # type: ignore[return-value]


def batch_arrays(store, plan: PatchPlan) -> tuple[np.ndarray, np.ndarray]:
    """The plan read from a :class:`strokeseg.data.volume_stores.VolumeStore`:
    images (B, d, h, w, M) float32 and masks (B, d, h, w, 1) float32, as the models take them."""
    images = np.empty((len(plan), *plan.patch, len(store.channels)), dtype=np.float32)
    masks = np.empty((len(plan), *plan.patch, 1), dtype=np.float32)
    for slot, (position, corner) in enumerate(plan):
        images[slot], masks[slot, ..., 0] = store.patch(position, corner, plan.patch)
    return images, masks


def _patch_size(patch: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(p) for p in patch)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"patch must be three positive sizes (X, Y, Z), not {tuple(patch)}")
    return size  # type: ignore[return-value]

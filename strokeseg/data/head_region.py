"""Which voxels set a T1's intensity window (``convert.head_region``), without relying on an exact-zero background.

The per-volume window of :func:`strokeseg.data.normalization.volume_robust` is a pair of percentiles
(0.5 and 99.5 by default) of "the head". ``nonzero`` (the original rule) takes every voxel with a
non-zero value: right for a skull-stripped volume whose background is exactly 0, wrong as soon as
the background holds scanner noise (every voxel is non-zero, and the low percentile lands in the
noise) or a skull is left (the percentiles take in the shell around the brain). ``robust`` finds the
brain's outline, then drops what inside it is only background:

1. **Foreground threshold: Otsu** on a 256-bin histogram of the volume (range clipped to the 99.9th
   percentile, so that a few hot voxels cannot squeeze the tissue into one bin). A head's
   histogram is dominated by the background (exact zeros or noise, most of the field of view), so
   Otsu's two-class split falls between the background and the brain's bright tissue whether the
   background is zero or noisy, and a shell a few % of the voxels large hardly moves it. A fraction
   of a high percentile was the other candidate; it was not taken because a bright shell *is* the
   high percentile (a shell at 1.3x white matter can move a 99th-percentile threshold by 30 %).
2. **The outline (envelope).** On the MNI152 2009 1 mm grid (ATLAS's and the synthetic cohort's,
   recognised from shape and affine by :func:`strokeseg.data.resample.on_grid`) it is the template brain
   mask (nilearn, offline): it leaves out a skull or scalp however they touch the brain. Elsewhere
   it comes from the foreground: **opened** once (6-neighbour cross), which cuts bridges and removes
   shells 1–2 voxels (2–4 mm) thin; the **largest 6-connected component** (the brain outweighs a
   shell of a few mm), with the foreground voxels the opening shaved off its surface given back;
   **closed** (two dilations, holes filled, two erosions: ~4 mm), which takes in the dark voxels
   Otsu left out — ventricles, deep sulci, dark lesions — as the brain they belong to.
3. **The noise floor.** The voxels outside the envelope and below the Otsu threshold are background.
   Their noise sigma is estimated from their median as for magnitude (Rayleigh) noise, median =
   sigma sqrt(2 ln 2) — the median rather than the histogram's mode, whose flat top and integer
   voxel values make it wander — and the floor is 3.5 sigma (P(Rayleigh > 3.5 sigma) = 0.2 %): 0 for an
   exact-zero background, so that on a clean skull-stripped brain the region is the non-zero voxels
   of the outline. The region is the envelope's voxels above the floor: background the envelope
   encloses or grazes is dropped, CSF — far above the noise — stays.

Everything is found on a grid subsampled to about 2 mm (every ``STEP_MM / spacing``-th voxel per
axis: 2 on a 1 mm grid; no subsampling below 2**20 voxels), and the window's percentiles are taken
over the region's voxels on that grid: they are only two percentiles of about 230 000 brain
voxels on a 197x233x189 volume, and an eighth of the voxels keeps the region at about 10 ms on the
MNI grid and 20–30 ms off it (``bench/head_region.py``; the whole normalisation is then within
~10 ms of the ``nonzero`` rule on an exact-zero background, and 2–4x faster than it on a noisy
one, whose percentiles it takes over every voxel). Morphology uses NumPy shifts (replicated borders), cropped to the
foreground's bounding box. A volume without two intensity levels (all zero, constant) has no region;
:func:`window_values` then falls back to the non-zero voxels, as ``nonzero`` does.

Known limit, off the MNI grid: a real skull and scalp that touch the brain over more than a thin
bridge stay in the largest component, and so in the window (a synthetic shell a few mm away does
not). On the MNI grid the template takes care of them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeseg.data.brain import mni_brain_mask
from strokeseg.data.resample import on_grid

RULES = ("robust", "nonzero")
LEGACY_RULE = "nonzero"       # the rule of configs recorded before convert.head_region existed
STEP_MM = 2.0                 # spacing of the grid the region is found on
SUBSAMPLE_ABOVE = 2 ** 20     # voxels: smaller volumes are processed at full resolution
BINS = 256                    # Otsu histogram bins
TOP_PERCENTILE = 99.9         # histogram range: [min, this percentile]
CLOSING = 2                   # dilations (then erosions) that close the outline, ~4 mm on the 2 mm grid
NOISE_SIGMAS = 3.5            # the noise floor: P(Rayleigh noise > 3.5 sigma) = exp(-6.1) = 0.2 %
RAYLEIGH_MEDIAN = float(np.sqrt(2 * np.log(2)))   # median / sigma of Rayleigh noise
_CROSS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class CoarseRegion:
    """The robust region on the subsampled grid ``volume[::s0, ::s1, ::s2]``."""
    steps: tuple[int, int, int]
    coarse: np.ndarray        # float32 voxel values of the coarse grid
    envelope: np.ndarray      # bool, coarse grid: the brain's outline (template or foreground)
    floor: float              # voxels at or below it are background
    threshold: float          # Otsu's foreground threshold
    mni: bool                 # the envelope is the MNI template brain mask


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown head region rule {rule!r}; expected one of {RULES}")


def subsample_steps(shape: tuple[int, ...], affine: np.ndarray | None) -> tuple[int, int, int]:
    """Per-axis steps of the ~``STEP_MM`` grid the region is found on (1 mm voxels without an affine)."""
    if int(np.prod(shape)) <= SUBSAMPLE_ABOVE:
        return (1, 1, 1)
    spacing = np.ones(3) if affine is None else np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return tuple(max(1, int(STEP_MM / s + 1e-6)) for s in spacing)


# ------------------------------------------------------------------------------- histogram
def _histogram_bins(values: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """(bin index of every value, lower edge, bin width) of a ``BINS``-bin histogram over
    [min, TOP_PERCENTILE]; values above the range fall in the last bin. None for a constant volume."""
    lo = float(values.min())
    sample = values.ravel()[::7] if values.size > 70_000 else values.ravel()   # the range only
    hi = float(np.percentile(sample, TOP_PERCENTILE))
    if not hi > lo:
        hi = float(values.max())
    if not hi > lo:
        return None
    width = (hi - lo) / BINS
    index = ((values - np.float32(lo)) * np.float32(1.0 / width)).astype(np.int32)
    np.clip(index, 0, BINS - 1, out=index)
    return index, lo, width


def otsu_bin(counts: np.ndarray) -> int:
    """Otsu's split of a histogram: the last bin of the lower class (maximum between-class variance)."""
    counts = counts.astype(np.float64)
    centres = np.arange(len(counts)) + 0.5
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1]
    mean0 = m0 / np.maximum(w0, 1.0)
    mean1 = (float((counts * centres).sum()) - m0) / np.maximum(w1, 1.0)
    return int(np.argmax(w0 * w1 * (mean0 - mean1) ** 2))


def otsu_threshold(values: np.ndarray) -> float | None:
    """Otsu's threshold of ``values`` (foreground: ``values >= threshold``); None when they are constant."""
    binned = _histogram_bins(np.asarray(values, dtype=np.float32))
    if binned is None:
        return None
    index, lo, width = binned
    return lo + (otsu_bin(np.bincount(index.ravel(), minlength=BINS)) + 1) * width


# ------------------------------------------------------------------------------ morphology
def _dilate(mask: np.ndarray, times: int = 1) -> np.ndarray:
    """6-neighbour dilation ``times`` over, by shifts (replicated borders)."""
    for _ in range(times):
        out = mask.copy()
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
        out[:, :, 1:] |= mask[:, :, :-1]
        out[:, :, :-1] |= mask[:, :, 1:]
        mask = out
    return mask


def _erode(mask: np.ndarray, times: int = 1) -> np.ndarray:
    return ~_dilate(~mask, times)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of ``mask``."""
    labels, count = ndimage.label(mask, structure=_CROSS)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed holes filled: the 6-connected background components that do not
    touch the array's border (:func:`scipy.ndimage.binary_fill_holes`, in one labelling pass)."""
    labels, count = ndimage.label(~mask, structure=_CROSS)
    if count == 0:
        return mask
    border = np.zeros(count + 1, dtype=bool)
    for axis in range(mask.ndim):
        border[np.take(labels, 0, axis=axis)] = True
        border[np.take(labels, -1, axis=axis)] = True
    border[0] = True                    # label 0 is the mask itself
    return ~border[labels] | mask


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` (not empty) widened by ``margin`` voxels."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def foreground_envelope(foreground: np.ndarray) -> np.ndarray:
    """Off the MNI grid: the brain's outline from the foreground (opened, largest component, closed
    and filled; see the module docstring)."""
    if not foreground.any():
        return foreground
    box = _box(foreground, margin=CLOSING + 1)
    inside = foreground[box]
    opened = _dilate(_erode(inside))
    if opened.any():   # the component, and the foreground voxels the opening shaved off its surface
        body = largest_component(opened)
        body |= _dilate(body) & inside
    else:
        body = largest_component(inside)
    closed = _erode(fill_holes(_dilate(body, CLOSING)), CLOSING) | body
    out = np.zeros(foreground.shape, dtype=bool)
    out[box] = closed
    return out


@functools.lru_cache(maxsize=2)
def _coarse_template(steps: tuple[int, int, int]) -> np.ndarray:
    return np.ascontiguousarray(mni_brain_mask()[0][::steps[0], ::steps[1], ::steps[2]])


# ---------------------------------------------------------------------------------- region
def coarse_region(volume: np.ndarray, affine: np.ndarray | None = None) -> CoarseRegion | None:
    """The robust region on the subsampled grid (see the module docstring); None for a volume
    without two intensity levels (all zero, constant)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"a head region needs a 3-D volume, got shape {volume.shape}")
    steps = subsample_steps(volume.shape, affine)
    coarse = np.ascontiguousarray(volume[::steps[0], ::steps[1], ::steps[2]], dtype=np.float32)
    binned = _histogram_bins(coarse)
    if binned is None:
        return None
    index, lo, width = binned
    split = otsu_bin(np.bincount(index.ravel(), minlength=BINS))
    foreground = index > split
    mni = affine is not None and on_grid(volume.shape, affine)   # other grids never load the template
    envelope = _coarse_template(steps) if mni else foreground_envelope(foreground)
    floor = noise_floor(coarse[~envelope & ~foreground])
    return CoarseRegion(steps, coarse, envelope, float(floor), lo + (split + 1) * width, mni)


def noise_floor(background: np.ndarray) -> float:
    """``NOISE_SIGMAS`` sigma of the background, sigma estimated from its median as for Rayleigh noise
    (median = sigma sqrt(2 ln 2)); 0 for an exact-zero background, -inf when there is no background."""
    if background.size == 0:
        return -np.inf
    sample = background[::max(1, background.size // 200_000)]          # a median needs no more
    median = float(np.sort(sample)[sample.size // 2])    # (np.partition is slow on many equal values)
    return NOISE_SIGMAS * max(median, 0.0) / RAYLEIGH_MEDIAN


def _upsample(mask: np.ndarray, steps: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour back onto the full grid (each coarse voxel stands for ``steps`` voxels)."""
    if steps == (1, 1, 1):
        return mask
    index = np.ix_(*[np.minimum(np.arange(n) // s, m - 1) for n, s, m in zip(shape, steps, mask.shape)])
    return mask[index]


def region(volume: np.ndarray, rule: str = "robust", affine: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (the volume's shape) of the head region under ``rule`` (``convert.head_region``);
    the robust envelope is brought back from its coarse grid and the floor applied at full resolution.
    (The window itself is computed on the coarse grid: :func:`window_values`.)"""
    check_rule(rule)
    volume = np.asarray(volume)
    if rule == "nonzero":
        return volume != 0
    found = coarse_region(volume, affine)
    if found is None:
        return np.zeros(volume.shape, dtype=bool)
    return _upsample(found.envelope, found.steps, volume.shape) & (volume > found.floor)


def window_values(volume: np.ndarray, rule: str = "robust", affine: np.ndarray | None = None) -> np.ndarray:
    """float32 values whose percentiles set the window: the non-zero voxels (``nonzero``), or the
    robust region's voxels on its coarse grid (``robust``; the non-zero voxels when there is no
    region, e.g. a constant volume)."""
    check_rule(rule)
    volume = np.asarray(volume)
    if rule == "robust":
        found = coarse_region(volume, affine)
        if found is not None:
            values = found.coarse[found.envelope & (found.coarse > found.floor)]
            if values.size:
                return values
    return volume[volume != 0].astype(np.float32)

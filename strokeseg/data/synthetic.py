"""A synthetic ATLAS-like cohort: T1w volumes with T1-hypointense stroke lesions and their masks.

ATLAS v2.0 cannot be redistributed, so the demo and the tests run on this cohort. It is built only
from what nilearn ships (the skull-stripped MNI152 2009 symmetric template and its GM/WM probability
maps, 197×233×189 at 1 mm, ATLAS's own grid and affine); nothing is downloaded.

Layout (exactly ATLAS v2.0's BIDS names)::

    out_dir/dataset_description.json          ("Synthetic": true, generator version, seed, ...)
    out_dir/Training/R0SS/sub-r0SSsNNN/ses-1/anat/sub-r0SSsNNN_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    out_dir/Training/R0SS/sub-r0SSsNNN/ses-1/anat/sub-r0SSsNNN_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    out_dir/Training/R0SS/sub-r0SSsNNN/ses-1/anat/sub-r0SSsNNN_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.json
        ({"LesionTerritories": [{"territory", "side", "voxel"}, ...]}: where each lesion was placed,
        :func:`placed_lesions`; stage 01 sets it beside the atlas-derived location as a check)

Subject ``i`` (0-based) lives at site ``R{i % 30 + 1:03d}`` with number ``i // 30 + 1``.

Every subject is a function of ``(seed, i, downsample)`` only, never of ``n_subjects``: a cohort of
40 is the first 40 subjects of the cohort of 655 with the same seed.

Sites differ as scanners do: each site has a profile (:func:`strokeseg.data.scanner_sites.site_profile`,
a function of ``(seed, site)`` drawn from its own random streams; the description records them
under ``"SiteProfiles"``): contrast, intensity scale, noise, bias-field strength, and the look of the
background: a third of the sites are skull-stripped (exact-zero background), the others have Rician
noise over the whole field of view, half of them also a bright shell standing in for the scalp and
skull. A cohort generated with another seed has other site profiles (and other subjects with the
same lesion statistics): ``generate_cohort(out, n, seed=other)`` makes a transfer cohort "from other
scanners".

Per subject (see :func:`synthesize_subject`):

- anatomy: the template, its GM+WM map, resampled through a smooth random deformation (cubic
  B-spline on a 32 mm control lattice, a few mm) combined with a small global scaling (±~3 %);
- lesions: the planned number of lesions, each an exact voxel count, each one 26-connected
  component, placed apart from the others (never 26-adjacent), inside GM+WM > 0.5 of the deformed
  template, with vascular-territory priors (MCA most often, deep/lacunar for small lesions, PCA,
  ACA, cerebellum, brainstem; left 58 %; MCA lesions kept off the medial cortex when they can);
  shapes are the upper level set of a multi-octave smooth random field plus a randomly oriented
  ellipsoidal envelope, grown from its maximum (irregular, never spheres or boxes);
- intensity: lesions darkened toward CSF intensity with a partial-volume border and some internal
  heterogeneity, then imaged with the site's profile (:mod:`strokeseg.data.scanner_sites`): its
  gamma and scale, each jittered per subject (WM about 500-1700 over the sites), a smooth
  multiplicative bias field (64 mm lattice; about ±4 % to ±35 % over the sites), the shell at shell
  sites, and Rician noise (sigma 1-6 % of the scale over the sites). At skull-stripped sites the
  background is exactly 0 and every brain voxel is >= 1, so ``T1 > 0`` is the head there; at the
  other two thirds of the sites the background is Rayleigh noise (a few voxels round to 0) and the
  head is not ``T1 > 0``. :attr:`SyntheticSubject.brain` is the brain (the deformed template's
  support) of every subject. The anatomy and the lesions, hence every mask, do not depend on the
  profile: the imaging draws come after them (generator version 2 has the masks of version 1).

Lesion statistics (:func:`sample_lesion_targets`) follow ATLAS v2.0 (655 subjects,
docs/upstream-raxnet.md §1.3, §2.1):

- total volume: a piecewise log-linear quantile function through ATLAS's bin frequencies
  (319, 154, 64, 49, 44, 25 of 655 in the right-closed bins of ``VOLUME_BIN_EDGES``), its median
  (5,290) and range (13 .. 496,656); mean ≈ 33,400 (ATLAS: 33,226);
- the bin of each draw is stratified: draw ``k`` takes the bin of ``(shift + vdc(k)) mod 1``, where
  ``vdc`` is the base-2 van der Corput sequence and ``shift`` one uniform per cohort (a rotated
  low-discrepancy sequence). Any prefix of 2**m draws then puts every bin of probability >= 2**-m
  into the sample, so every bin (the rarest has p = 25/655 > 1/32) is populated from 32 subjects on;
  the position inside the bin is drawn at random;
- lesion count: ATLAS's frequencies (1: 307, 2: 136, 3: 81, 4: 53, 5: 20, 6: 15, 7: 11, 8: 13,
  9: 7, 11-33: 12 spread ∝ 1/k), coupled to the volume by a Gaussian copula (rank correlation
  about 0.4: larger totals have more lesions), then capped so that each lesion has at least
  ``MIN_LESION_VOXELS`` voxels;
- split: one dominant lesion (share ~ Beta(4, 1.5)), the rest lognormal shares, sizes >= the minimum.

Downsampling (``downsample = d``, for tiny test cohorts): the grid is the 1 mm grid sampled every
d-th voxel after a Gaussian anti-aliasing filter (sigma 0.42·d), so voxel (0, 0, 0) keeps its place,
the shape is ``ceil(shape / d)`` and the affine is ``template_affine @ diag(d, d, d, 1)``. The same
deformation (in mm) is used at every d; lesion sizes are divided by d**3 (physical volume kept),
with at least ``MIN_LESION_VOXELS_DOWNSAMPLED`` voxels per lesion.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr, ndtri

from strokeseg.config import SYNTHETIC_LIMITS, VOLUME_BIN_EDGES
from strokeseg.data.cohort import MASK_SUFFIX, T1W_SUFFIX
from strokeseg.data.scanner_sites import N_SITES, SiteProfile, cohort_profiles, site_profile
from strokeseg.errors import InputError
from strokeseg.parallel import map_ordered
from strokeseg.workdir import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SYNTHETIC_COHORT_NAME = "strokeseg synthetic ATLAS-like cohort"
# 2: site scanner profiles (strokeseg.data.scanner_sites); 3: each mask's JSON sidecar records the territory
# of every placed lesion (volumes and masks identical to version 2)
GENERATOR_VERSION = 3

DESCRIPTION_FILE = "dataset_description.json"
MAX_SUBJECTS, MAX_DOWNSAMPLE = SYNTHETIC_LIMITS["synthetic"]   # the config checks them too

MIN_LESION_VOXELS = 8                 # per lesion, at 1 mm
MIN_LESION_VOXELS_DOWNSAMPLED = 4     # per lesion, at downsample > 1
MIN_TOTAL_VOXELS = 13                 # ATLAS's smallest total lesion volume

# Total lesion volume (voxels at 1 mm): quantile function, log-linear between knots. The knots at
# the bin edges carry ATLAS's cumulative bin frequencies; the others shape the inside of the bins
# (median 5,300, mean ~33,400, a long tail up to ATLAS's maximum).
_N_ATLAS = 655
_VOLUME_KNOTS = np.array([13, 100, 500, 1_000, 2_000, 5_000, 5_300, 10_000, 30_000, 60_000,
                          100_000, 130_000, 200_000, 260_000, 350_000, 496_656], dtype=float)
_VOLUME_CDF = np.array([0.0, 0.03, 0.13, 0.22, 0.33, 319 / _N_ATLAS, 0.5, 0.61, 473 / _N_ATLAS,
                        537 / _N_ATLAS, 586 / _N_ATLAS, 0.932, 630 / _N_ATLAS, 0.98, 0.995, 1.0])
_BIN_CDF = np.interp(np.log(np.clip(VOLUME_BIN_EDGES, 1, _VOLUME_KNOTS[-1])),
                     np.log(_VOLUME_KNOTS), _VOLUME_CDF)
_BIN_CDF[0], _BIN_CDF[-1] = 0.0, 1.0

# Lesions per subject (ATLAS v2.0, 655 subjects); the 12 subjects with 11..33 lesions are spread
# over 11..33 with weights ∝ 1/k.
_COUNT_VALUES = np.arange(1, 34)
_count_weights = np.zeros(33)
_count_weights[:9] = [307, 136, 81, 53, 20, 15, 11, 13, 7]
_tail = 1.0 / np.arange(11, 34)
_count_weights[10:] = 12 * _tail / _tail.sum()
_COUNT_CDF = np.cumsum(_count_weights) / _count_weights.sum()
_COUNT_VOLUME_RHO = 0.45              # Gaussian-copula correlation between volume and count

_TARGET_SHIFT_KEY = 0x5EED            # spawn key of the cohort-level stratification shift


# ----------------------------------------------------------------------------------------------
# Lesion statistics
# ----------------------------------------------------------------------------------------------
def _van_der_corput(k: np.ndarray) -> np.ndarray:
    """Base-2 radical inverse of each non-negative integer."""
    k = np.asarray(k, dtype=np.uint64).copy()
    out = np.zeros(k.shape, dtype=float)
    scale = 0.5
    while np.any(k):
        out += (k & np.uint64(1)).astype(float) * scale
        k >>= np.uint64(1)
        scale /= 2
    return out


def _volume_quantile(u: np.ndarray) -> np.ndarray:
    return np.exp(np.interp(u, _VOLUME_CDF, np.log(_VOLUME_KNOTS)))


def _draw_targets(u_bin: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Total volume and lesion count for each stratification uniform ``u_bin`` (bin choice)."""
    u_bin = np.atleast_1d(np.asarray(u_bin, dtype=float))
    n = u_bin.size
    within = rng.random(n)
    z = rng.standard_normal(n)
    b = np.clip(np.searchsorted(_BIN_CDF, u_bin, side="right") - 1, 0, len(_BIN_CDF) - 2)
    lo, hi = _BIN_CDF[b], _BIN_CDF[b + 1]
    u = np.clip(lo + within * (hi - lo), 1e-12, 1 - 1e-12)
    volume = np.maximum(np.rint(_volume_quantile(u)).astype(np.int64), MIN_TOTAL_VOXELS)
    # Values at an inner bin edge belong to the lower bin (right-closed); keep the drawn bin.
    upper = np.asarray(VOLUME_BIN_EDGES, dtype=float)[b + 1]
    lower = np.asarray(VOLUME_BIN_EDGES, dtype=float)[b]
    volume = np.where(volume > upper, np.floor(np.minimum(upper, 1e12)), volume)
    volume = np.where(volume <= lower, lower + 1, volume).astype(np.int64)
    u_count = ndtr(_COUNT_VOLUME_RHO * ndtri(u) + math.sqrt(1 - _COUNT_VOLUME_RHO ** 2) * z)
    count = _COUNT_VALUES[np.minimum(np.searchsorted(_COUNT_CDF, u_count, side="right"), 32)]
    count = np.minimum(count, np.maximum(volume // MIN_LESION_VOXELS, 1)).astype(np.int64)
    return volume, count


def sample_lesion_targets(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ATLAS-like (total lesion volume in 1 mm voxels, lesion count) pairs.

    The volume bin of draw ``k`` is stratified by a randomly rotated van der Corput sequence (see
    the module docstring), so bin frequencies match ATLAS closely for any ``n``; the rest is random.
    """
    shift = rng.random()
    u_bin = (shift + _van_der_corput(np.arange(int(n)))) % 1.0
    return _draw_targets(u_bin, rng)


def _split_volume(total: int, count: int, rng: np.random.Generator) -> list[int]:
    """Split ``total`` voxels among ``count`` lesions: one dominant, all >= MIN_LESION_VOXELS."""
    if count <= 1:
        return [int(total)]
    dominant = rng.beta(4.0, 1.5)
    rest = rng.lognormal(0.0, 0.8, count - 1)
    shares = np.concatenate([[dominant], (1 - dominant) * rest / rest.sum()])
    free = total - count * MIN_LESION_VOXELS
    sizes = MIN_LESION_VOXELS + np.floor(shares * free).astype(np.int64)
    sizes = np.sort(sizes)[::-1]
    sizes[0] += total - sizes.sum()
    return [int(s) for s in sizes]


@dataclass(frozen=True)
class LesionPlan:
    total_1mm: int                 # target total volume at 1 mm
    sizes_1mm: tuple[int, ...]     # per lesion at 1 mm, largest first
    sizes: tuple[int, ...]         # per lesion on the generated grid (downsample applied)


def _subject_streams(seed: int, index: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence([int(seed), int(index)]).spawn(3)   # targets, anatomy, lesions


def lesion_plan(seed: int, index: int, downsample: int = 1) -> LesionPlan:
    """The lesion sizes subject ``index`` of the cohort with ``seed`` gets (exact voxel counts)."""
    shift = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_TARGET_SHIFT_KEY,))).random()
    rng = np.random.default_rng(_subject_streams(seed, index)[0])
    u_bin = (shift + _van_der_corput(np.array([index]))) % 1.0
    volume, count = _draw_targets(u_bin, rng)
    sizes_1mm = _split_volume(int(volume[0]), int(count[0]), rng)
    if downsample == 1:
        sizes = sizes_1mm
    else:
        sizes = [max(MIN_LESION_VOXELS_DOWNSAMPLED, int(round(s / downsample ** 3))) for s in sizes_1mm]
    return LesionPlan(int(volume[0]), tuple(sizes_1mm), tuple(sizes))


# ----------------------------------------------------------------------------------------------
# Names and paths
# ----------------------------------------------------------------------------------------------
def subject_name(index: int) -> str:
    """``sub-r{site}s{number}`` of subject ``index`` (0-based), e.g. 4 -> ``sub-r005s001``."""
    site, number = index % N_SITES + 1, index // N_SITES + 1
    return f"sub-r{site:03d}s{number:03d}"


def subject_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    """(T1w path, lesion-mask path) of subject ``index`` under the cohort root ``out_dir``."""
    name = subject_name(index)
    anat = Path(out_dir) / "Training" / f"R{index % N_SITES + 1:03d}" / name / "ses-1" / "anat"
    return anat / f"{name}_ses-1{T1W_SUFFIX}", anat / f"{name}_ses-1{MASK_SUFFIX}"


# ----------------------------------------------------------------------------------------------
# Anatomy (cached once per process and downsample factor)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Anatomy:
    t1: np.ndarray           # fine (1 mm) template, anti-aliased for d > 1, float32 in 0..1
    tissue: np.ndarray       # fine GM + WM probability, same filtering
    head: np.ndarray         # fine template support (T1 > 0) as 0/1, same filtering
    affine: np.ndarray       # affine of the generated grid
    shape: tuple[int, int, int]
    bbox: tuple[slice, slice, slice]   # output-grid region that can hold the (deformed) head
    centre: np.ndarray       # brain centre, fine voxel index


@lru_cache(maxsize=1)
def _fine_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets  # slow import: only where a cohort is generated

    t1_img = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    t1 = t1_img.get_fdata(dtype=np.float32)
    head = (t1 > 0).astype(np.float32)    # the template is skull-stripped: its support is the head
    return t1, np.clip(gm + wm, 0, 1), head, np.array(t1_img.affine, dtype=float)


def template_grid(downsample: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the generated grid: the nilearn MNI152 2009 grid, every d-th voxel."""
    t1, _, _, affine = _fine_template()
    d = int(downsample)
    shape = tuple(int(math.ceil(s / d)) for s in t1.shape)
    return shape, affine @ np.diag([d, d, d, 1.0])


_MAX_SHIFT_MM = 16.0   # deformation + global scaling stay well below this


@lru_cache(maxsize=2)
def _anatomy(downsample: int) -> _Anatomy:
    t1, tissue, head, _ = _fine_template()
    d = int(downsample)
    shape, affine = template_grid(d)
    nonzero = np.argwhere(head > 0)
    if d > 1:
        sigma = 0.42 * d
        t1, tissue, head = (ndi.gaussian_filter(a, sigma, mode="constant") for a in (t1, tissue, head))
    lo = np.maximum(np.floor((nonzero.min(0) - _MAX_SHIFT_MM) / d), 0).astype(int)
    hi = np.minimum(np.ceil((nonzero.max(0) + _MAX_SHIFT_MM) / d) + 1, shape).astype(int)
    bbox = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    centre = nonzero.mean(0)
    return _Anatomy(t1, tissue, head, affine, shape, bbox, centre)


def _bspline_matrix(positions: np.ndarray, spacing: float, m: int | None = None) -> np.ndarray:
    """Cubic B-spline basis (n, m) for knots at (k - 1) * spacing, k = 0..m-1; positions >= 0."""
    t = np.asarray(positions, dtype=float) / spacing
    if m is None:
        m = int(np.floor(t.max())) + 4
    x = np.abs(t[:, None] - (np.arange(m) - 1)[None, :])
    basis = np.where(x < 1, 2 / 3 - x ** 2 + x ** 3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
    return basis.astype(np.float32)


def _spline_field(coef: np.ndarray, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> np.ndarray:
    f = np.tensordot(bx, coef, axes=(1, 0))     # (nx, my, mz)
    f = np.tensordot(f, by, axes=(1, 1))        # (nx, mz, ny)
    return np.tensordot(f, bz, axes=(1, 1))     # (nx, ny, nz)


def _smooth_noise(rng: np.random.Generator, shape, spacing: float) -> np.ndarray:
    """Smooth random field on ``shape`` (cubic B-spline of white noise on a lattice), unit std."""
    bases = [_bspline_matrix(np.arange(n) + rng.random() * spacing, spacing) for n in shape]
    coef = rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32)
    f = _spline_field(coef, *bases)
    std = float(f.std())
    return f / std if std > 0 else f


def _deformed_anatomy(rng: np.random.Generator, anat: _Anatomy, d: int):
    """Template intensities, GM+WM map and head through a smooth random deformation, on the bbox."""
    positions = [np.arange(s.start, s.stop) * float(d) for s in anat.bbox]   # fine index = mm
    spacing = 32.0
    # One lattice in mm for every downsample factor and bbox, so the deformation is the same field.
    bases = [_bspline_matrix(p + spacing, spacing, int((n - 1 + spacing) // spacing) + 4)
             for p, n in zip(positions, anat.t1.shape)]
    scale = np.exp(rng.normal(0.0, 0.025)) * np.exp(rng.normal(0.0, 0.01, 3))
    scale = np.clip(scale, 0.93, 1.07)
    coords = np.empty((3,) + tuple(len(p) for p in positions), dtype=np.float32)
    for axis in range(3):
        coef = np.clip(rng.normal(0.0, 4.0, tuple(b.shape[1] for b in bases)), -9, 9).astype(np.float32)
        disp = _spline_field(coef, *bases)
        base = anat.centre[axis] + (positions[axis] - anat.centre[axis]) / scale[axis]
        view = [1, 1, 1]
        view[axis] = -1
        coords[axis] = disp + base.reshape(view).astype(np.float32)
    t1 = ndi.map_coordinates(anat.t1, coords, order=1, mode="constant", cval=0.0)
    tissue = ndi.map_coordinates(anat.tissue, coords, order=1, mode="constant", cval=0.0)
    head = ndi.map_coordinates(anat.head, coords, order=1, mode="constant", cval=0.0) > 0.5
    return t1, tissue, head


# ----------------------------------------------------------------------------------------------
# Lesions
# ----------------------------------------------------------------------------------------------
# Territories, in mm on the MNI grid, written for the left hemisphere (x < 0; mirrored for the
# right): prior weight, largest total (1 mm voxels) a lesion there may have, box of lesion centres,
# centre used for large lesions, lateralised or midline.
@dataclass(frozen=True)
class _Territory:
    name: str
    weight: float
    max_voxels: float
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    core: tuple[float, float, float]
    lateral: bool = True
    medial_mm: float = 0.0   # lesions are pushed away from the midline closer than this


_TERRITORIES = (
    _Territory("MCA", 0.55, math.inf, (-62, -75, -12), (-22, 35, 55), (-38, -12, 12), medial_mm=24.0),
    _Territory("deep", 0.18, 12_000, (-30, -30, -6), (-10, 20, 26), (-22, -5, 8)),
    _Territory("PCA", 0.11, 150_000, (-35, -100, -18), (-4, -55, 25), (-18, -78, 5)),
    _Territory("ACA", 0.05, 100_000, (-15, -25, 10), (-3, 55, 70), (-8, 20, 42)),
    _Territory("cerebellum", 0.07, 60_000, (-45, -88, -58), (-6, -45, -20), (-24, -66, -36)),
    _Territory("brainstem", 0.04, 10_000, (-8, -40, -50), (8, -18, -10), (0, -30, -30), False),
)
_P_LEFT = 0.58                 # left hemisphere somewhat more often
_P_SAME_TERRITORY = 0.6        # a further lesion shares the dominant lesion's territory and side
_ENVELOPE_FACTOR = 1.8         # ellipsoid volume / lesion volume
_R_MAX = 1.5                   # candidates lie within r <= _R_MAX of the envelope
_CSF_LEVEL, _WM_LEVEL = 0.28, 0.87     # template intensities
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)


def _choose_territory(rng: np.random.Generator, volume_1mm: int) -> tuple[_Territory, int]:
    fits = [t for t in _TERRITORIES if volume_1mm <= t.max_voxels]
    w = np.array([t.weight for t in fits])
    territory = fits[rng.choice(len(fits), p=w / w.sum())]
    side = (-1 if rng.random() < _P_LEFT else 1) if territory.lateral else 0
    return territory, side


@dataclass
class _LesionCanvas:
    allowed: np.ndarray      # GM+WM > 0.5 of the deformed template
    forbidden: np.ndarray    # lesions so far, dilated by one voxel
    mask: np.ndarray
    affine: np.ndarray
    d: int


def _place_lesion(rng: np.random.Generator, canvas: _LesionCanvas, size: int, territory: _Territory,
                  side: int, attempt: int) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """Try once to draw a lesion of exactly ``size`` voxels; None when it does not fit here."""
    d = canvas.d
    shape = canvas.mask.shape
    radius_mm = (3 * size * d ** 3 * _ENVELOPE_FACTOR / (4 * math.pi)) ** (1 / 3) * 1.15 ** min(attempt, 6)
    if attempt < 24:
        lo, hi, core = (np.array(v, dtype=float) for v in (territory.lo, territory.hi, territory.core))
        pull = float(np.clip(1 - radius_mm / 40.0, 0.25, 1.0))
        centre_mm = core + (rng.uniform(lo, hi) - core) * pull
        if side > 0:
            centre_mm[0] = -centre_mm[0]
    else:   # fallback: anywhere in free tissue
        free = np.flatnonzero(canvas.allowed & ~canvas.forbidden)
        if free.size == 0:
            return None
        centre_vox = np.array(np.unravel_index(free[rng.integers(free.size)], shape), dtype=float)
        centre_mm = (canvas.affine @ np.append(centre_vox, 1))[:3]
        side = 0
    centre = np.linalg.solve(canvas.affine, np.append(centre_mm, 1.0))[:3]
    aspect = np.exp(rng.normal(0.0, 0.25, 3))
    radii = radius_mm / d * aspect / np.prod(aspect) ** (1 / 3)             # voxels
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    half = int(math.ceil(_R_MAX * radii.max())) + 2
    c = np.rint(centre).astype(int)
    box = tuple(slice(max(ci - half, 0), min(ci + half + 1, n)) for ci, n in zip(c, shape))
    if any(s.stop - s.start < 1 for s in box):
        return None
    rel = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(ci) for s, ci in zip(box, centre)]
    grids = [r.reshape([-1 if k == a else 1 for k in range(3)]) for a, r in enumerate(rel)]
    r2 = np.zeros(tuple(len(r) for r in rel), dtype=np.float32)
    for k in range(3):
        u = grids[0] * rot[0, k] + grids[1] * rot[1, k] + grids[2] * rot[2, k]
        r2 += (u / np.float32(radii[k])) ** 2
    cand = canvas.allowed[box] & ~canvas.forbidden[box] & (r2 <= _R_MAX ** 2)
    medial = None
    if side:
        x_mm = canvas.affine[0, 0] * np.arange(box[0].start, box[0].stop) + canvas.affine[0, 3]
        cand &= (side * x_mm >= 1.0)[:, None, None]
        if territory.medial_mm > 0 and attempt < 24:
            medial = np.clip(1.0 - side * x_mm / territory.medial_mm, 0.0, 1.0).astype(np.float32)
    if cand.sum() < size:
        return None
    spacing = max(2.0, 0.6 * float(radii.min()))
    noise = (_smooth_noise(rng, r2.shape, spacing)
             + 0.5 * _smooth_noise(rng, r2.shape, max(1.5, spacing / 2))
             + 0.25 * _smooth_noise(rng, r2.shape, max(1.5, spacing / 4))) / np.float32(1.146)
    beta = rng.uniform(0.6, 2.0)     # envelope weight: low = ragged, high = compact
    score = (noise + beta * (1.0 - r2)).astype(np.float32)
    if medial is not None:   # territorial infarcts spare the medial (ACA/PCA) cortex when they can
        score -= 2.5 * medial[:, None, None]
    score[~cand] = -np.inf
    seed = np.unravel_index(int(np.argmax(score)), score.shape)
    labels, _ = ndi.label(cand, _STRUCT26)
    comp = labels == labels[seed]
    n_comp = int(comp.sum())
    if n_comp < size:
        return None
    lesion = _grow_exact(score, comp, seed, size, n_comp)
    return box, lesion, noise


def _seed_component(above: np.ndarray, seed) -> np.ndarray:
    labels, _ = ndi.label(above, _STRUCT26)
    return labels == labels[seed]


def _grow_exact(score: np.ndarray, comp: np.ndarray, seed, size: int, n_comp: int) -> np.ndarray:
    """A 26-connected set of exactly ``size`` voxels of ``comp`` holding ``seed``, high ``score`` first.

    A threshold on ``score`` gives the seed's component close to ``size`` from below; voxels adjacent
    to the set are then added by decreasing score (adjacency keeps it connected) until exact.
    """
    values = np.sort(score[comp])[::-1]
    if size >= n_comp:
        return comp.copy()
    # size(k): voxels of the seed's component among the k best of comp; non-decreasing, <= k.
    k_lo, k_hi = 0, n_comp + 1      # size(k_lo) <= size < size(k_hi)
    best = np.zeros_like(comp)
    best[seed] = True
    k = size
    for _ in range(16):
        current = _seed_component(comp & (score >= values[k - 1]), seed)
        n = int(current.sum())
        if n > size:
            k_hi = k
            k_next = (k_lo + k_hi) // 2
        else:
            k_lo, best = k, current
            if n >= 0.9 * size:
                break
            k_next = int(math.ceil(k * size / max(n, 1)))     # more voxels, roughly in proportion
        k = min(max(k_next, k_lo + 1), k_hi - 1)
        if k <= k_lo:
            break
    lesion = best
    n = int(lesion.sum())
    while n < size:
        ring = ndi.binary_dilation(lesion, _STRUCT26) & comp & ~lesion
        idx = np.flatnonzero(ring)
        need = size - n
        if idx.size > need:
            idx = idx[np.argpartition(-score.ravel()[idx], need - 1)[:need]]
        lesion.ravel()[idx] = True
        n += idx.size
    return lesion


@dataclass(frozen=True)
class PlacedLesion:
    """Where the generator put one lesion: its vascular territory (``other`` when it fell back to
    anywhere in free tissue), the side it aimed at (``left``, ``right``; ``""`` for midline
    territories and the fallback) and one voxel of the lesion (grid index), which names its component."""
    territory: str
    side: str
    voxel: tuple[int, int, int]


def _draw_lesions(rng: np.random.Generator, t1: np.ndarray, tissue: np.ndarray, plan: LesionPlan,
                  affine: np.ndarray, d: int) -> tuple[np.ndarray, list[PlacedLesion]]:
    canvas = _LesionCanvas(allowed=tissue > 0.5, forbidden=np.zeros(t1.shape, bool),
                           mask=np.zeros(t1.shape, np.uint8), affine=affine, d=d)
    placed_lesions = []
    dominant = None
    for size, size_1mm in zip(plan.sizes, plan.sizes_1mm):
        if dominant is not None and dominant[0].max_voxels >= size_1mm and rng.random() < _P_SAME_TERRITORY:
            territory, side = dominant
        else:
            territory, side = _choose_territory(rng, size_1mm)
        for attempt in range(40):
            if attempt and attempt % 8 == 0 and attempt < 24:
                territory, side = _choose_territory(rng, size_1mm)
            placed = _place_lesion(rng, canvas, size, territory, side, attempt)
            if placed is not None:
                break
        else:
            raise RuntimeError(f"could not place a lesion of {size} voxels")
        box, lesion, noise = placed
        canvas.mask[box][lesion] = 1
        canvas.forbidden[box] |= ndi.binary_dilation(lesion, _STRUCT26)
        _darken(rng, t1, box, lesion, noise)
        inside = np.argwhere(lesion)[0] + np.array([b.start for b in box])
        fallback = attempt >= 24
        placed_lesions.append(PlacedLesion("other" if fallback else territory.name,
                                           "" if fallback or not side else ("left" if side < 0 else "right"),
                                           tuple(int(v) for v in inside)))
        if dominant is None:
            dominant = (territory, side)
    return canvas.mask, placed_lesions


def _darken(rng: np.random.Generator, t1: np.ndarray, box, lesion: np.ndarray, noise: np.ndarray) -> None:
    """T1 hypointensity toward CSF with a partial-volume border and some heterogeneity."""
    pv = ndi.gaussian_filter(lesion.astype(np.float32), 0.6, mode="constant")
    pv[lesion] = np.maximum(pv[lesion], 0.7)
    level = _CSF_LEVEL + rng.uniform(0.0, 0.35) * (_WM_LEVEL - _CSF_LEVEL)
    level = level + 0.05 * noise
    local = t1[box]
    local -= pv * np.clip(local - level, 0.0, None)


# ----------------------------------------------------------------------------------------------
# One subject
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSubject:
    name: str
    t1: np.ndarray           # int16
    mask: np.ndarray         # uint8 in {0, 1}
    affine: np.ndarray
    plan: LesionPlan
    placed: tuple[PlacedLesion, ...]
    profile: SiteProfile     # the scanner profile of the subject's site
    brain: np.ndarray        # bool: the deformed (skull-stripped) template's support, lesions inside
    shell: np.ndarray        # bool: voxels carrying the skull/scalp stand-in (none unless profile.shell)


def synthesize_subject(seed: int, index: int, downsample: int = 1) -> SyntheticSubject:
    """Subject ``index`` of the cohort with ``seed``, in memory (a function of these three only)."""
    d = int(downsample)
    anat = _anatomy(d)
    plan = lesion_plan(seed, index, d)
    profile = site_profile(int(seed), index % N_SITES + 1)
    _, anatomy_seq, lesion_seq = _subject_streams(seed, index)
    rng_a = np.random.default_rng(anatomy_seq)
    rng_l = np.random.default_rng(lesion_seq)

    t1_box, tissue_box, head = _deformed_anatomy(rng_a, anat, d)
    t1 = np.zeros(anat.shape, np.float32)
    tissue = np.zeros(anat.shape, np.float32)
    t1[anat.bbox] = t1_box
    tissue[anat.bbox] = tissue_box
    del t1_box, tissue_box

    mask, placed = _draw_lesions(rng_l, t1, tissue, plan, anat.affine, d)

    head |= mask[anat.bbox] > 0     # (a no-op: lesions lie in GM+WM, inside the head)
    brain = np.zeros(anat.shape, bool)
    brain[anat.bbox] = head
    del tissue, head
    # The scanner: the site's profile, jittered per subject, drawn after the anatomy (which it cannot change).
    out, shell = _acquire(rng_a, profile, t1, brain, d)
    return SyntheticSubject(subject_name(index), out, mask, anat.affine, plan, tuple(placed), profile,
                            brain, shell)


# ----------------------------------------------------------------------------------------------
# Imaging at the subject's site (profiles: strokeseg.data.scanner_sites)
# ----------------------------------------------------------------------------------------------
_SHELL_CLOSING_MM = 20.0     # the shell follows the brain closed by a 20 mm ball: it skips sulci, fissures, notches
_SHELL_VARIATION = 0.2       # local shell thickness: x (1 + 0.2 z), z a smooth unit field clipped to +-2
_SHELL_TEXTURE = 0.08        # local shell brightness: x (1 + 0.08 z), the same z
_SHELL_FIELD_MM = 16.0       # lattice spacing of z


def _shell(rng: np.random.Generator, profile: SiteProfile, brain: np.ndarray, d: int):
    """(flat indices, fractions, z) of the voxels the shell reaches, in increasing index order.

    Distances (mm) from the brain closed by a ball of ``_SHELL_CLOSING_MM`` are computed on a grid of
    about 2 mm (every other voxel at d = 1) and interpolated at the candidate voxels only. A voxel's
    fraction is the part of a d mm wide voxel, along the distance gradient, that lies in the band
    ``gap <= distance <= gap + thickness (1 + 0.2 z)`` (a 1 mm partial-volume ramp at d = 1). Brain
    voxels (lesions included) never belong to the shell; the grid clips it.
    """
    step = 2 if d == 1 else 1
    voxel = float(d * step)
    coarse = brain[::step, ::step, ::step]
    outside = ndi.distance_transform_edt(~coarse, sampling=voxel)
    r = _SHELL_CLOSING_MM
    # Distance to the closing C of the brain B by a ball of radius r: C dilated by r is B dilated by r,
    # so beyond r it equals the distance to B; within, it is r minus the depth inside B dilated by r.
    depth = ndi.distance_transform_edt(outside <= r, sampling=voxel)
    distance = np.where(outside > r, outside, np.maximum(r - depth, 0.0)).astype(np.float32)
    del outside, depth
    z = np.clip(_smooth_noise(rng, coarse.shape, max(_SHELL_FIELD_MM / voxel, 2.0)), -2.0, 2.0).astype(np.float32)
    gap, thickness = np.float32(profile.shell_gap_mm), np.float32(profile.shell_thickness_mm)
    half, margin = np.float32(d / 2), np.float32(1.5 * voxel)   # > the distance from a voxel to its coarse one
    reach = gap + thickness * np.float32(1 + 2 * _SHELL_VARIATION) + half
    near = (distance >= gap - half - margin) & (distance <= reach + margin)
    if step > 1:
        for axis, n in enumerate(brain.shape):
            near = np.repeat(near, step, axis=axis).take(np.arange(n), axis=axis)
    idx = np.flatnonzero(near & ~brain)
    if step > 1:
        fine = np.unravel_index(idx, brain.shape)
        coords = np.array(fine, dtype=np.float32) / np.float32(step)
        dist = ndi.map_coordinates(distance, coords, order=1, mode="nearest")
        z_at = z[tuple(c // step for c in fine)]     # z is smooth on a 16 mm lattice: nearest is enough
    else:
        dist, z_at = distance.ravel()[idx], z.ravel()[idx]
    outer = gap + thickness * (1 + np.float32(_SHELL_VARIATION) * z_at)
    width = np.float32(d)
    fraction = np.clip((dist - gap + half) / width, 0, 1) - np.clip((dist - outer + half) / width, 0, 1)
    keep = fraction > 0
    return idx[keep], fraction[keep], z_at[keep]


def _acquire(rng: np.random.Generator, profile: SiteProfile, t1: np.ndarray, brain: np.ndarray, d: int):
    """(int16 T1w, shell mask): the lesioned template ``t1`` (0..1) imaged at the subject's site.

    Contrast (site gamma and scale, each jittered per subject), a smooth multiplicative bias field
    (64 mm lattice), the shell at shell sites (same bias and noise), Rician noise on the signal; the
    background is 0 at skull-stripped sites (brain voxels >= 1 there) and Rayleigh noise elsewhere.
    """
    gamma = np.float32(profile.gamma * math.exp(rng.normal(0.0, 0.03)))
    scale = np.float32(profile.scale * math.exp(rng.normal(0.0, 0.04)))
    bias_std = np.float32(profile.bias * rng.uniform(0.85, 1.15))
    sigma = np.float32(profile.noise * scale * rng.uniform(0.9, 1.1))
    region = brain
    if profile.shell:
        shell_level = np.float32(profile.shell_contrast * rng.uniform(0.95, 1.05) * _WM_LEVEL ** gamma * scale)
        shell_idx, fraction, z = _shell(rng, profile, brain, d)
        region = brain.copy()
        region.ravel()[shell_idx] = True
    bias = np.exp(bias_std * _smooth_noise(rng, brain.shape, 64.0 / d))
    n = int(region.sum())
    signal = np.empty(n, np.float32)
    in_brain = brain[region]
    signal[in_brain] = (np.clip(t1[brain], 0, 1) ** gamma) * scale
    if profile.shell:    # shell_idx is increasing: the order of the region's non-brain voxels
        signal[~in_brain] = fraction * shell_level * (1 + np.float32(_SHELL_TEXTURE) * z)
    signal *= bias[region]
    del bias
    real = signal + sigma * rng.standard_normal(n, dtype=np.float32)
    imag = sigma * rng.standard_normal(n, dtype=np.float32)
    values = np.sqrt(real * real + imag * imag)
    if profile.skull_stripped:
        out = np.zeros(brain.shape, np.int16)
    else:   # magnitude of complex Gaussian noise without signal: Rayleigh(sigma) = sigma sqrt(2 Exp(1))
        background = sigma * np.sqrt(2 * rng.standard_exponential(brain.shape, dtype=np.float32))
        out = np.clip(np.rint(background), 0, 32767).astype(np.int16)
        del background
    out[region] = np.clip(np.rint(values), 1 if profile.skull_stripped else 0, 32767).astype(np.int16)
    shell = region & ~brain if profile.shell else np.zeros(brain.shape, bool)
    return out, shell


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    header = img.header
    header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=4)    # 4 = MNI152
    img.set_sform(affine, code=4)
    header.set_xyzt_units("mm")
    header["descrip"] = description.encode()[:79]
    if array.dtype == np.uint8:
        header["cal_min"], header["cal_max"] = 0, 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_subject_job(job: tuple[str, int, int, int]) -> str:
    return _write_subject(*job)


def _write_subject(out_dir: str, seed: int, index: int, downsample: int) -> str:
    subject = synthesize_subject(seed, index, downsample)
    t1_path, mask_path = subject_paths(Path(out_dir), index)
    _save_nifti(subject.t1, subject.affine, t1_path, "strokeseg synthetic T1w")
    _save_nifti(subject.mask, subject.affine, mask_path, "strokeseg synthetic lesion mask")
    atomic_write_text(territories_path(mask_path), json.dumps({"LesionTerritories": [
        {"territory": p.territory, "side": p.side, "voxel": list(p.voxel)} for p in subject.placed]}) + "\n")
    return subject.name


def territories_path(mask_path: Path) -> Path:
    """The mask's JSON sidecar, where the generator records the territory of every lesion it placed."""
    name = Path(mask_path).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    return Path(mask_path).with_name(stem + ".json")


def placed_lesions(mask_path: Path) -> list[PlacedLesion] | None:
    """The territories recorded beside a synthetic mask; None where there is no readable record (a
    real cohort, or a cohort of generator version 2 or older)."""
    try:
        record = json.loads(territories_path(mask_path).read_text())["LesionTerritories"]
        return [PlacedLesion(str(r["territory"]), str(r["side"]), tuple(int(v) for v in r["voxel"])) for r in record]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo \
            or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def generate_cohort(out_dir: Path, n_subjects: int, seed: int, downsample: int = 1, workers: int = 1,
                    progress: bool = True) -> None:
    """Write a synthetic ATLAS-like cohort of ``n_subjects`` under ``out_dir`` (see module docstring).

    ``out_dir`` may exist (empty); the caller makes the whole write atomic. ``workers > 1`` uses a
    process pool (strokeseg.parallel); ``progress`` shows a bar on stderr. The description is
    written last.
    """
    write_cohort(out_dir, n_subjects, seed, downsample, workers, progress, _write_subject_job, MAX_SUBJECTS,
                 MAX_DOWNSAMPLE, "synthetic cohort", _describe)


def _describe(n_subjects: int, seed: int, downsample: int) -> dict:
    return {
        "Name": SYNTHETIC_COHORT_NAME,
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "Synthetic": True,
        "GeneratorVersion": GENERATOR_VERSION,
        "n_subjects": n_subjects,
        "seed": seed,
        "downsample": downsample,
        "Description": ("Synthetic ATLAS-like stroke cohort (T1w with T1-hypointense lesion masks, "
                        "not real patients), built by strokeseg on the MNI152 2009 "
                        "(MNI152NLin2009aSym) template shipped in nilearn; each site images its "
                        "subjects with its own scanner profile (SiteProfiles)."),
        "GeneratedBy": [{"Name": "strokeseg.data.synthetic", "Version": str(GENERATOR_VERSION)}],
        "SiteProfiles": cohort_profiles(seed, n_subjects),
    }


def write_cohort(out_dir: Path, n_subjects: int, seed: int, downsample: int, workers: int, progress: bool,
                 write_job: Callable[[tuple[str, int, int, int]], str], max_subjects: int, max_downsample: int,
                 label: str, describe: Callable[[int, int, int], dict]) -> None:
    """What every synthetic flavour does: check the arguments, write subject i with
    ``write_job((out_dir, seed, i, downsample))`` on ``workers`` processes (0: one per core; the files
    do not depend on it), then ``describe(n_subjects, seed, downsample)`` as the dataset description,
    last, so a cohort cut short has none."""
    n_subjects = _check_int("n_subjects", n_subjects, 1, max_subjects)
    seed = _check_int("seed", seed, 0)
    downsample = _check_int("downsample", downsample, 1, max_downsample)
    workers = max(1, min(_check_int("workers", workers, 0) or (os.cpu_count() or 1), n_subjects))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("generating a %s of %d subjects (seed %d, downsample %d, %d worker(s)) in %s",
             label, n_subjects, seed, downsample, workers, out_dir)
    jobs = [(str(out_dir), seed, i, downsample) for i in range(n_subjects)]
    for _ in map_ordered(write_job, jobs, workers, label, progress):
        pass
    atomic_write_text(out_dir / DESCRIPTION_FILE, json.dumps(describe(n_subjects, seed, downsample), indent=2) + "\n")
    log.info("%s written to %s", label, out_dir)


# ----------------------------------------------------------------------------------------------
# Reading the description
# ----------------------------------------------------------------------------------------------
def _description(dataset_dir: Path) -> dict | None:
    path = Path(dataset_dir) / DESCRIPTION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read dataset description ({exc.__class__.__name__}: {exc})") from exc
    return data if isinstance(data, dict) else None


def is_synthetic(dataset_dir: Path) -> bool:
    """True iff ``dataset_dir/dataset_description.json`` says ``"Synthetic": true``."""
    data = _description(dataset_dir)
    return bool(data) and data.get("Synthetic") is True


def cohort_parameters(dataset_dir: Path) -> dict | None:
    """``{"GeneratorVersion", "n_subjects", "seed", "downsample"}`` as recorded, or None if not synthetic."""
    data = _description(dataset_dir)
    if not data or data.get("Synthetic") is not True:
        return None
    return {key: data.get(key) for key in ("GeneratorVersion", "n_subjects", "seed", "downsample")}

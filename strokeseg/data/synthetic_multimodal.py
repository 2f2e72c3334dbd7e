"""A synthetic ISLES'22-like cohort: DWI and ADC with acute stroke lesions, each session on its own grid.

The multi-channel, per-subject-grid code path (the ISLES'22 reader, stage 01's validation and
resampling, per-subject evaluation) needs a cohort whose volumes do *not* share the MNI grid and
that carries more than one channel. ISLES'22 is not shipped, so this module builds one from the
same nilearn MNI152 2009 template, tissue maps, deformation and lesion placement as the ATLAS-like
cohort (:mod:`strokeseg.data.synthetic`, whose private helpers are reused, not copied). It is not
patient data, and ``dataset_description.json`` says so (``"Synthetic": true``,
``"Flavour": "multimodal"``), so :func:`strokeseg.data.synthetic.is_synthetic` and
:func:`~strokeseg.data.synthetic.cohort_parameters` work on it unchanged.

Layout (the full ISLES'22 release's BIDS names; subjects 1-based)::

    out_dir/dataset_description.json
    out_dir/rawdata/sub-strokecaseNNNN/ses-SSSS/dwi/sub-strokecaseNNNN_ses-SSSS_dwi.nii.gz   float32
    out_dir/rawdata/sub-strokecaseNNNN/ses-SSSS/dwi/sub-strokecaseNNNN_ses-SSSS_adc.nii.gz   float32
    out_dir/derivatives/sub-strokecaseNNNN/ses-SSSS/sub-strokecaseNNNN_ses-SSSS_msk.nii.gz  uint8 {0, 1}

Subject ``i`` (0-based) is ``sub-strokecase{i + 1:04d}``. Every 8th patient (``i % 8 == 7``) has two
sessions, ``ses-0001`` and ``ses-0002``: the same deformed anatomy, independent lesion draws and
grids, so that session grouping (one patient never straddling folds) is exercised. The others have
``ses-0001`` only. DWI, ADC and mask of a session share one affine and one header (only the data
type differs).

Every session is a function of ``(seed, i, downsample)`` only, never of ``n_subjects`` or of the
number of workers: a cohort of 8 is the first 8 subjects of the cohort of 200 with the same seed,
byte for byte. The random streams differ from the ATLAS-like cohort's, so the same seed gives
unrelated anatomy in the two flavours.

What is modelled, per session:

- anatomy: :mod:`~strokeseg.data.synthetic`'s deformed template (smooth B-spline deformation and
  global scaling) on its work grid (1 mm, or ``downsample`` mm), shared by a patient's sessions;
  grey/white matter split by template intensity, CSF = head minus GM+WM;
- lesions: :mod:`~strokeseg.data.synthetic`'s placement (vascular territories, irregular connected
  shapes, never touching each other, inside GM+WM) with an *acute* size distribution: total volume
  lognormal with median 3 mL and log-sd 1.5, clipped to 0.2-100 mL (ISLES'22 lesions are small,
  median a few mL, over a wide range); 1-4 lesions (weights 45/25/17/13 %), split as in the
  ATLAS-like cohort (one dominant lesion, the others smaller);
- signals: each work voxel mixes tissue (GM/WM by template intensity) and CSF; each compartment
  contributes ``S0 · exp(-b · ADC)`` with b = 1000 s/mm², a relative T2-weighted ``S0`` (WM 0.9,
  GM 1.1, CSF 2.2, lesion tissue × 1.4-2.0 for T2 shine-through/oedema) and an ADC (10^-6 mm²/s,
  the full release's unit) of WM 690-780, GM 820-920, CSF 2800-3200, lesion 430-560 with smooth
  ±8 % texture, all drawn per session. The DWI (scaled so tissue is a few hundred) shows the lesion
  at about 2-3 × tissue and CSF dark, as on real scans;
- partial volume mixes *signals*: S0 and DWI are resampled onto the acquisition grid and the ADC
  is ``ln(S0 / DWI) / b`` there (so a CSF-touching lesion voxel stays low on ADC, CSF's DWI signal
  being tiny), faded to 0 across the brain's edge by the resampled head fraction;
- acquisition, on the session's own grid: a smooth multiplicative bias (about ±10-20 % on DWI,
  ±2-4 % on ADC), Rician noise on DWI (2-4 % of tissue) and Gaussian noise folded to non-negative
  on ADC (25-45 units). Outside the head both carry that noise only: near 0, never exactly 0, never
  negative (the one real ISLES'22 case at hand is brain-extracted with an exact-0 background).

What is not modelled -- this is not real DWI physics: no diffusion tensor or directions, no b0 or
per-direction images, an ADC computed from noise-free signals (not fitted from noisy DWI, so its
noise is simply added), no T1/T2 relaxation beyond one S0 per compartment, no EPI distortion,
susceptibility artefacts, ghosting or motion, no skull or scalp (the template is skull-stripped),
no lesion evolution between sessions, no FLAIR, no JSON sidecars.

Grid rules (:func:`acquisition_grid`):

- spacing: in-plane ``U(1.8, 2.2)`` mm (both in-plane axes equal, as on a square matrix), slice
  ``U(2.0, 2.5)`` mm, all multiplied by ``downsample``;
- orientation: LAS (first axis to the patient's left, as ISLES'22), RAS for every 3rd patient
  (``i % 3 == 2``), with a small oblique tilt (pitch up to ±12°, roll and yaw up to ±5°: real
  affines are oblique) that keeps the axis codes;
- field of view: square in-plane, ``U(200, 240)`` mm or the head's extent plus 1-2 voxels, whichever
  is larger; slice direction the head's extent plus ``U(4, 24)`` mm; the head is placed at a random
  offset inside it. The whole head is always inside, so every lesion is;
- resampling from the work grid through world coordinates (:mod:`strokeseg.data.resample`'s rules):
  channels trilinear after a Gaussian anti-aliasing filter that models the larger voxel's extent
  (sigma ``0.42 · sqrt(r² - 1)`` work voxels for a spacing ratio ``r``); the mask trilinear without
  filtering, then ``>= 0.5``. If no voxel reaches 0.5 (a tiny lesion between voxel centres at a
  large ``downsample``), the voxel of highest lesion fraction is set, so each mask is non-empty.

The world coordinates are the template's MNI mm throughout: a voxel's position from its affine is
where the anatomy is, so a mask's centroid lies in the brain, near the origin.

Downsampling (``downsample = d``, for tiny test cohorts): the work grid is the ATLAS-like cohort's
grid at ``d`` (``d`` mm) and every acquisition spacing is multiplied by ``d``, so volumes have about
``110/d`` voxels in-plane and ``75/d`` slices (d = 3: about 33-45 and 24-32). Lesion sizes are
divided by ``d³`` on the work grid (physical volume kept), with at least 16 work voxels per lesion
(about two acquisition voxels, so that lesions survive the ``>= 0.5`` rule).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from strokeseg.config import SYNTHETIC_LIMITS
from strokeseg.data.resample import MASK_LEVEL, to_grid
from strokeseg.data.synthetic import (
    LesionPlan,
    _anatomy,
    _deformed_anatomy,
    _description,
    _draw_lesions,
    _smooth_noise,
    _split_volume,
    write_cohort,
)
from strokeseg.workdir import atomic_path

log = logging.getLogger(__name__)

MULTIMODAL_COHORT_NAME = "strokeseg synthetic ISLES22-like cohort"
MULTIMODAL_GENERATOR_VERSION = 1
FLAVOUR = "multimodal"
MAX_SUBJECTS, MAX_DOWNSAMPLE = SYNTHETIC_LIMITS["synthetic_multimodal"]   # the config checks them too
CHANNELS = ("dwi", "adc")

_FLAVOUR_KEY = 0x15E5        # entropy word separating these streams from the ATLAS-like cohort's
_STREAM_ANATOMY, _STREAM_LESIONS, _STREAM_GRID, _STREAM_SIGNAL = range(4)

# Acute lesions (1 mm voxels = mm³).
_MEDIAN_ML, _LOG_SD = 3.0, 1.5
_MIN_ML, _MAX_ML = 0.2, 100.0
_COUNT_WEIGHTS = np.array([0.45, 0.25, 0.17, 0.13])          # 1..4 lesions
# A lesion has at least two acquisition voxels' worth of work voxels (acquisition voxels are about
# 2·d mm, work voxels d mm): smaller ones vanish under the >= 0.5 rule at a large downsample.
_MIN_LESION_WORK_VOXELS = 16

# Contrast (ADC in 10^-6 mm²/s; S0 relative).
_B_VALUE = 1000.0            # s/mm²
_GM_T1, _WM_T1 = 0.66, 0.84  # template intensities taken as pure GM / pure WM
_S0_WM, _S0_GM, _S0_CSF = 0.9, 1.1, 2.2

_DESCRIP = b"strokeseg synthetic ISLES22-like, not patient data"


# ----------------------------------------------------------------------------------------------
# Names and paths
# ----------------------------------------------------------------------------------------------
def subject_name(index: int) -> str:
    """``sub-strokecase{index + 1:04d}`` of subject ``index`` (0-based)."""
    return f"sub-strokecase{index + 1:04d}"


def session_names(index: int) -> tuple[str, ...]:
    """The sessions of subject ``index``: two for every 8th patient (``index % 8 == 7``), else one."""
    return ("ses-0001", "ses-0002") if index % 8 == 7 else ("ses-0001",)


def orientation(index: int) -> str:
    """``"RAS"`` for every 3rd patient (``index % 3 == 2``), else ``"LAS"`` (ISLES'22's own)."""
    return "RAS" if index % 3 == 2 else "LAS"


def session_paths(out_dir: Path, index: int, session: str) -> tuple[Path, Path, Path]:
    """(DWI, ADC, mask) paths of ``session`` of subject ``index`` under the cohort root ``out_dir``."""
    sub = subject_name(index)
    stem = f"{sub}_{session}"
    dwi_dir = Path(out_dir) / "rawdata" / sub / session / "dwi"
    mask = Path(out_dir) / "derivatives" / sub / session / f"{stem}_msk.nii.gz"
    return dwi_dir / f"{stem}_dwi.nii.gz", dwi_dir / f"{stem}_adc.nii.gz", mask


def _rng(seed: int, index: int, stream: int, session: int = 0) -> np.random.Generator:
    """An independent stream per (seed, subject, purpose, session): no draw shifts another."""
    sequence = np.random.SeedSequence([int(seed), int(index), _FLAVOUR_KEY],
                                      spawn_key=(stream, session))
    return np.random.default_rng(sequence)


# ----------------------------------------------------------------------------------------------
# Lesion sizes
# ----------------------------------------------------------------------------------------------
def acute_lesion_plan(rng: np.random.Generator, downsample: int = 1) -> LesionPlan:
    """An ISLES'22-like lesion plan: total lognormal (median 3 mL) in 0.2-100 mL, 1-4 lesions.

    Sizes are exact voxel counts on the work grid (``downsample`` mm voxels), at least
    ``_MIN_LESION_WORK_VOXELS`` each; the 1 mm sizes pick the vascular territories in
    :func:`strokeseg.data.synthetic._draw_lesions`.
    """
    total_ml = float(np.clip(_MEDIAN_ML * math.exp(_LOG_SD * rng.standard_normal()), _MIN_ML, _MAX_ML))
    total = int(round(total_ml * 1000))
    count = int(rng.choice(len(_COUNT_WEIGHTS), p=_COUNT_WEIGHTS)) + 1
    sizes_1mm = _split_volume(total, count, rng)
    d = int(downsample)
    sizes = [max(_MIN_LESION_WORK_VOXELS, int(round(s / d ** 3))) for s in sizes_1mm]
    return LesionPlan(total, tuple(sizes_1mm), tuple(sizes))


# ----------------------------------------------------------------------------------------------
# Anatomy and clean contrast on the work grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WorkAnatomy:
    """A patient's deformed anatomy on the head's bounding box of the work grid (``d`` mm)."""
    t1: np.ndarray           # template intensity, 0..1
    tissue: np.ndarray       # GM + WM probability
    head: np.ndarray         # bool
    affine: np.ndarray       # of the bounding box (the work-grid affine shifted to its corner)
    head_world: np.ndarray   # (n, 3) world mm of the head voxels, for the field of view
    d: int


def _work_anatomy(seed: int, index: int, d: int) -> _WorkAnatomy:
    anat = _anatomy(d)
    t1, tissue, head = _deformed_anatomy(_rng(seed, index, _STREAM_ANATOMY), anat, d)
    corner = np.eye(4)
    corner[:3, 3] = [s.start for s in anat.bbox]
    affine = anat.affine @ corner
    voxels = np.argwhere(head).astype(float)
    head_world = voxels @ affine[:3, :3].T + affine[:3, 3]
    return _WorkAnatomy(t1, tissue, head, affine, head_world, d)


@dataclass(frozen=True)
class SessionContrast:
    """Per-session tissue parameters (drawn once, recorded for tests and reports)."""
    adc_wm: float
    adc_gm: float
    adc_csf: float
    adc_lesion: float
    s0_lesion_gain: float
    dwi_scale: float


def _draw_contrast(rng: np.random.Generator) -> SessionContrast:
    return SessionContrast(adc_wm=rng.uniform(690, 780), adc_gm=rng.uniform(820, 920),
                     adc_csf=rng.uniform(2800, 3200), adc_lesion=rng.uniform(430, 560),
                     s0_lesion_gain=rng.uniform(1.4, 2.0), dwi_scale=rng.uniform(500, 900))


def _clean_signals(rng: np.random.Generator, anatomy: _WorkAnatomy, lesion: np.ndarray,
                   contrast: SessionContrast) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free signals (S0, DWI) on the work grid, ``dwi_scale`` applied; 0 outside the head.

    Each voxel is a mix of tissue (GM/WM) and CSF, each compartment contributing its own
    ``S0 · exp(-b · ADC)``: partial volume mixes signals, as in an acquisition, not ADC values. The
    lesion replaces the tissue's ADC (with some texture) and raises its S0.
    """
    head = anatomy.head.astype(np.float32)
    tissue = np.clip(anatomy.tissue, 0, 1) * head
    csf = head - tissue
    wm = np.clip((anatomy.t1 - _GM_T1) / (_WM_T1 - _GM_T1), 0, 1)    # WM share of the tissue
    adc_tissue = wm * contrast.adc_wm + (1 - wm) * contrast.adc_gm
    s0_tissue = wm * _S0_WM + (1 - wm) * _S0_GM
    # Heterogeneity: a smooth field (about 8 mm features) so that lesion ADC is not one value.
    texture = _smooth_noise(rng, lesion.shape, max(8.0 / anatomy.d, 1.5))
    lesion_f = lesion.astype(np.float32)
    adc_lesion = contrast.adc_lesion * (1 + 0.08 * np.clip(texture, -2.5, 2.5))
    adc_tissue = adc_tissue * (1 - lesion_f) + adc_lesion * lesion_f
    s0_tissue = s0_tissue * (1 + (contrast.s0_lesion_gain - 1) * lesion_f)
    b = _B_VALUE * 1e-6
    s0 = tissue * s0_tissue + csf * _S0_CSF
    dwi = tissue * s0_tissue * np.exp(-b * adc_tissue) + csf * _S0_CSF * np.exp(-b * contrast.adc_csf)
    scale = np.float32(contrast.dwi_scale)
    return (scale * s0).astype(np.float32), (scale * dwi).astype(np.float32)


def _adc_from_signals(s0: np.ndarray, dwi: np.ndarray, head: np.ndarray) -> np.ndarray:
    """ADC (10^-6 mm²/s) = ln(S0 / DWI) / b of the resampled clean signals, faded out with the head.

    The ratio is the compartments' signal-weighted mix (CSF, whose DWI signal is tiny, barely
    raises a lesion voxel's ADC); multiplying by the head fraction makes ADC fall to 0 across the
    brain's edge instead of jumping there.
    """
    tiny = np.float32(1e-6) * max(float(s0.max()), 1.0)
    ratio = np.maximum(s0, tiny) / np.maximum(dwi, tiny)
    adc = np.log(np.maximum(ratio, 1.0)) / np.float32(_B_VALUE * 1e-6)
    return np.where(s0 > tiny, adc * np.clip(head, 0, 1), 0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The acquisition grid
# ----------------------------------------------------------------------------------------------
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A small oblique tilt: pitch (about x) up to ±12°, roll and yaw up to ±5°."""
    pitch = math.radians(rng.uniform(-12, 12))
    roll, yaw = (math.radians(float(np.clip(rng.normal(0, 2.5), -5, 5))) for _ in range(2))
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll),
                              math.cos(yaw), math.sin(yaw))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def acquisition_grid(rng: np.random.Generator, head_world: np.ndarray, axes: str,
                     downsample: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of one session's grid, holding every point of ``head_world`` (world mm).

    ``axes`` is ``"LAS"`` or ``"RAS"``. See the module docstring for the rules.
    """
    d = int(downsample)
    in_plane = rng.uniform(1.8, 2.2) * d
    spacing = np.array([in_plane, in_plane, rng.uniform(2.0, 2.5) * d])
    flip = np.diag([-1.0 if axes == "LAS" else 1.0, 1.0, 1.0])
    directions = _rotation(rng) @ flip            # columns: world direction of each voxel axis
    local = head_world @ directions               # head points in the grid's own (unit) frame
    lo, hi = local.min(0), local.max(0)
    extent = hi - lo
    # Voxel centres must reach one voxel beyond the head on each side: n >= extent / s + 3.
    need = np.ceil(extent / spacing).astype(int) + 3
    fov = rng.uniform(200, 240)
    n_plane = max(int(need[0]), int(need[1]), int(math.ceil(fov / in_plane)))
    n_slice = max(int(need[2]), int(math.ceil((extent[2] + rng.uniform(4, 24)) / spacing[2])) + 3)
    shape = (n_plane, n_plane, n_slice)
    slack = (np.array(shape) - 1) * spacing - extent - 2 * spacing      # >= 0 by construction
    start = lo - spacing - slack * rng.uniform(0.2, 0.8, 3)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = directions @ start
    return shape, affine


# ----------------------------------------------------------------------------------------------
# From the work grid to the acquisition grid
# ----------------------------------------------------------------------------------------------
def _antialias(volume: np.ndarray, work_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Blur to the extent of the larger acquisition voxel (the tilt is small: axes match)."""
    ratio = np.asarray(spacing) / work_mm
    sigma = 0.42 * np.sqrt(np.maximum(ratio ** 2 - 1, 0))
    if not np.any(sigma > 0):
        return volume
    return ndi.gaussian_filter(volume, sigma, mode="constant")


def _resample_mask(lesion: np.ndarray, work_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """Trilinear lesion fraction, then ``>= 0.5``; at least one voxel (the highest fraction)."""
    fraction = to_grid(lesion.astype(np.float32), work_affine, shape, affine, order=1)
    mask = (fraction >= np.float32(MASK_LEVEL)).astype(np.uint8)
    if not mask.any():
        # A lesion smaller than the voxel spacing falls between centres: keep its best voxel.
        mask.flat[int(np.argmax(fraction))] = 1
    return mask


def _acquire(rng: np.random.Generator, dwi: np.ndarray, adc: np.ndarray, spacing: np.ndarray,
             dwi_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Bias fields and noise on the acquisition grid (noise is per acquired voxel, not interpolated)."""
    lattice = 64.0 / float(np.mean(spacing))       # bias features of about 64 mm
    dwi_bias = np.exp(np.float32(rng.uniform(0.05, 0.09)) * _smooth_noise(rng, dwi.shape, lattice))
    adc_bias = np.exp(np.float32(rng.uniform(0.01, 0.02)) * _smooth_noise(rng, adc.shape, lattice))
    # Rician magnitude noise: positive everywhere, a Rayleigh floor outside the head.
    sigma = np.float32(dwi_scale * 0.45 * rng.uniform(0.02, 0.04))
    real = dwi * dwi_bias + sigma * rng.standard_normal(dwi.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(dwi.shape, dtype=np.float32)
    dwi_out = np.sqrt(real * real + imag * imag)
    # ADC maps are clipped at 0 by scanners; folding keeps a little non-zero noise outside.
    adc_sigma = np.float32(rng.uniform(25, 45))
    adc_out = np.abs(adc * adc_bias + adc_sigma * rng.standard_normal(adc.shape, dtype=np.float32))
    return dwi_out.astype(np.float32), adc_out.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# One subject
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultimodalSession:
    subject: str
    session: str
    dwi: np.ndarray          # float32
    adc: np.ndarray          # float32
    mask: np.ndarray         # uint8 {0, 1}
    affine: np.ndarray       # shared by the three
    plan: LesionPlan
    territories: tuple[str, ...]
    contrast: SessionContrast
    work_mask: np.ndarray    # the lesions on the work grid's head box, before resampling (uint8)
    work_affine: np.ndarray  # its affine (template world mm): where the lesions really are


def _synthesize_session(anatomy: _WorkAnatomy, seed: int, index: int, number: int,
                        session: str) -> MultimodalSession:
    d = anatomy.d
    rng_lesions = _rng(seed, index, _STREAM_LESIONS, number)
    plan = acute_lesion_plan(rng_lesions, d)
    # _draw_lesions darkens a T1 as it goes (the ATLAS-like contrast): give it a scratch copy.
    lesion, placed = _draw_lesions(rng_lesions, anatomy.t1.copy(), anatomy.tissue, plan,
                                        anatomy.affine, d)

    rng_signal = _rng(seed, index, _STREAM_SIGNAL, number)
    contrast = _draw_contrast(rng_signal)
    s0_work, dwi_work = _clean_signals(rng_signal, anatomy, lesion, contrast)

    shape, affine = acquisition_grid(_rng(seed, index, _STREAM_GRID, number), anatomy.head_world,
                                     orientation(index), d)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    s0, dwi, head = (to_grid(_antialias(v, float(d), spacing), anatomy.affine, shape, affine, order=1)
                     for v in (s0_work, dwi_work, anatomy.head.astype(np.float32)))
    adc = _adc_from_signals(s0, dwi, head)
    mask = _resample_mask(lesion, anatomy.affine, shape, affine)
    dwi, adc = _acquire(rng_signal, dwi, adc, spacing, contrast.dwi_scale)
    return MultimodalSession(subject_name(index), session, dwi, adc, mask, affine, plan,
                             tuple(p.territory for p in placed), contrast, lesion, anatomy.affine)


def synthesize_multimodal_subject(seed: int, index: int, downsample: int = 1) -> list[MultimodalSession]:
    """All sessions of subject ``index``, in memory (a function of these three arguments only)."""
    d = int(downsample)
    anatomy = _work_anatomy(seed, index, d)
    return [_synthesize_session(anatomy, seed, index, number, session)
            for number, session in enumerate(session_names(index))]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """One NIfTI-1 file; the same header fields for every file of a session (scanner space, mm)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)    # 1 = scanner: these are not template-space images
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = _DESCRIP
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_subject_job(job: tuple[str, int, int, int]) -> str:
    return _write_subject(*job)


def _write_subject(out_dir: str, seed: int, index: int, downsample: int) -> str:
    for s in synthesize_multimodal_subject(seed, index, downsample):
        dwi_path, adc_path, mask_path = session_paths(Path(out_dir), index, s.session)
        _save(s.dwi, s.affine, dwi_path)
        _save(s.adc, s.affine, adc_path)
        _save(s.mask, s.affine, mask_path)
    return subject_name(index)


def generate_multimodal_cohort(out_dir: Path, n_subjects: int, seed: int, downsample: int = 1,
                               workers: int = 1, progress: bool = False) -> None:
    """Write a synthetic ISLES'22-like cohort of ``n_subjects`` patients under ``out_dir``.

    See the module docstring for the layout and the model. ``out_dir`` may exist (empty); the
    caller makes the whole write atomic. ``workers > 1`` uses a process pool (``0``: one per
    core); the files do not depend on it. The description is written last.
    """
    write_cohort(out_dir, n_subjects, seed, downsample, workers, progress, _write_subject_job, MAX_SUBJECTS,
                 MAX_DOWNSAMPLE, "synthetic multimodal cohort", _describe)


def _describe(n_subjects: int, seed: int, downsample: int) -> dict:
    return {
        "Name": MULTIMODAL_COHORT_NAME,
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "Synthetic": True,
        "Flavour": FLAVOUR,
        "GeneratorVersion": MULTIMODAL_GENERATOR_VERSION,
        "n_subjects": n_subjects,
        "seed": seed,
        "downsample": downsample,
        "Description": ("Synthetic ISLES'22-like acute stroke cohort (DWI b=1000 and ADC with lesion "
                        "masks, each session on its own grid; not real patients and not real "
                        "diffusion physics), built by strokeseg on the MNI152 2009 template shipped "
                        "in nilearn."),
        "GeneratedBy": [{"Name": "strokeseg.data.synthetic_multimodal",
                         "Version": str(MULTIMODAL_GENERATOR_VERSION)}],
    }


def is_multimodal(dataset_dir: Path) -> bool:
    """True iff ``dataset_dir`` holds a synthetic cohort of this flavour (``"Flavour": "multimodal"``)."""
    data = _description(dataset_dir)
    return bool(data) and data.get("Synthetic") is True and data.get("Flavour") == FLAVOUR

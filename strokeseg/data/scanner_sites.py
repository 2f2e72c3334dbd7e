"""Scanner profiles of the synthetic ATLAS-like cohort's sites (R001..R030).

ATLAS v2.0 pools 44 cohorts from 11 countries: 1.5 T and 3 T scanners of several vendors, T1w
sequences of the MPRAGE and SPGR/FFE families, defaced and MNI-registered, generally with skull
and a noisy background. A synthetic cohort whose sites all look alike teaches a model nothing about
scanner variation and makes site-stratified or leave-site-out studies meaningless, so each site of
:mod:`strokeseg.data.synthetic` gets a profile here, and every subject of the site is imaged with
it (subjects jitter a little around the site's contrast, scale, noise and bias; see
``synthesize_subject``).

**Determinism.** ``site_profile(seed, site)`` is a function of the cohort seed and the site only,
drawn from its own random streams: ``SeedSequence(seed, spawn_key=(SITE_PROFILE_KEY,))`` for the
cohort-level assignment of kinds, ``SeedSequence(seed, spawn_key=(SITE_PROFILE_KEY, site))`` for the
site's values. They share nothing with the subjects' anatomy and lesion streams, so adding the
profiles left every lesion mask bit-identical. A cohort generated with another seed has other
site profiles: ``generate_cohort(out, n, seed=other)`` is how a transfer cohort "from other
scanners" is made (same lesion statistics, other subjects, other sites).

**Kinds and proportions** (exact in every cohort: a per-seed random permutation of the 30 sites):

- 10 skull-stripped sites: exact-zero background and no skull, the head voxels >= 1, so at these
  sites (only) ``T1 > 0`` is the head, as in cohorts shared skull-stripped and in pipelines that
  skull-strip before segmentation;
- 10 sites with a noisy background: Rician noise over the whole field of view (the magnitude of
  complex Gaussian noise, hence Rayleigh where there is no signal), no skull: isolates what the
  background alone does to normalisation and models;
- 10 sites with a noisy background and a bright shell around the brain standing in for the scalp
  fat and the diploe that make the skull region bright on T1w (ATLAS's usual look).

A third skull-stripped keeps the zero-background case every study meets in deployment, two thirds
unstripped keeps ATLAS's majority look; splitting the unstripped ones evenly, with and without the
shell, lets a site-wise analysis tell the effect of the background noise from that of the shell.
Exact counts (rather than independent draws) keep every kind present in every 30-site cohort and in
each fold of a leave-site-out study with few folds.

**Ranges** (site values; the subject jitter is in ``synthesize_subject``). Nothing was measured on
ATLAS images; the ranges are the textbook ones for 1 mm 3-D T1w at 1.5 T and 3 T:

- field strength: 1.5 T or 3 T, even odds; it sets the noise and bias ranges below;
- contrast: a site gamma on the template intensities, log-uniform in [0.80, 1.25] (GM/WM ratio
  0.79..0.69 around the template's 0.74: the MPRAGE/SPGR, TI and flip-angle spread; before, each
  subject drew exp(N(0, 0.08)), about 0.85..1.17);
- intensity scale (arbitrary scanner units, white matter ~0.87**gamma of it): log-uniform in
  [600, 1800] (before: 900..1130 per subject): vendors and reconstructions scale differently;
- noise: Rician sigma as a fraction of the scale, log-uniform in [0.010, 0.035] at 3 T and
  [0.020, 0.060] at 1.5 T (white-matter SNR about 25-85 and 15-45; MNI resampling smooths some of
  it away; before: 0.015..0.035 everywhere);
- bias field: standard deviation of the smooth log-field, uniform in [0.06, 0.16] at 3 T (no or weak
  vendor correction, multichannel coils: about +-12..35 % over the head) and [0.02, 0.10] at 1.5 T
  (about +-4..20 %); before: 0.05..0.09 everywhere;
- shell (shell sites only): a band starting ``shell_gap_mm`` in [2, 4] mm outside the deformed brain
  (CSF, dura and inner table: dark), ``shell_thickness_mm`` in [3, 5] mm thick (+-20 % smooth local
  variation), at ``shell_contrast`` in [1.1, 1.5] x the subject's white matter (scalp fat and
  marrow are brighter than white matter on T1w), with the same bias field and noise as the brain
  (subjects jitter the contrast by +-5 %). Distances are taken from the brain closed by a 20 mm
  ball, so the band spans sulci, the interhemispheric fissure and the notches of the skull base as
  the skull does instead of dipping into them. It is clipped to the grid, never overlaps the brain
  or a lesion, and also surrounds the brainstem down to the grid's lower face (where the real image
  has neck tissue).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

N_SITES = 30
SITE_PROFILE_KEY = 0x517E      # spawn key of the site-profile streams (lesion shift: 0x5EED)

SKULL_STRIPPED, NOISY, NOISY_SHELL = "skull_stripped", "noisy_background", "noisy_background_shell"
KIND_COUNTS = {SKULL_STRIPPED: 10, NOISY: 10, NOISY_SHELL: 10}     # of the N_SITES sites

FIELD_STRENGTHS_T = (1.5, 3.0)
GAMMA_RANGE = (0.80, 1.25)                                          # log-uniform
SCALE_RANGE = (600.0, 1800.0)                                       # log-uniform
NOISE_RANGE = {1.5: (0.020, 0.060), 3.0: (0.010, 0.035)}           # sigma / scale, log-uniform
BIAS_RANGE = {1.5: (0.02, 0.10), 3.0: (0.06, 0.16)}                # log-field std, uniform
SHELL_GAP_MM = (2.0, 4.0)
SHELL_THICKNESS_MM = (3.0, 5.0)
SHELL_CONTRAST = (1.1, 1.5)                                         # x white matter


@dataclass(frozen=True)
class SiteProfile:
    """How site ``site`` (1..30) of a synthetic cohort images its subjects."""

    site: int
    field_strength_t: float
    skull_stripped: bool           # exact-zero background; else Rician noise over the field of view
    shell: bool                    # bright skull/scalp stand-in (never at skull-stripped sites)
    gamma: float                   # contrast: template intensity ** gamma
    scale: float                   # intensity scale (white matter ~ 0.87 ** gamma * scale)
    noise: float                   # Rician sigma / scale
    bias: float                    # std of the smooth log bias field
    shell_gap_mm: float | None = None
    shell_thickness_mm: float | None = None
    shell_contrast: float | None = None     # shell intensity / white matter

    @property
    def name(self) -> str:
        return f"R{self.site:03d}"

    @property
    def kind(self) -> str:
        return SKULL_STRIPPED if self.skull_stripped else NOISY_SHELL if self.shell else NOISY

    def describe(self) -> str:
        """One line, e.g. ``R004 3T noisy background + shell (gap 2.6 mm, 3.4 mm, 1.27x WM); gamma ...``."""
        if self.skull_stripped:
            look = "skull-stripped"
        elif self.shell:
            look = (f"noisy background + shell (gap {self.shell_gap_mm:.1f} mm, {self.shell_thickness_mm:.1f} mm, "
                    f"{self.shell_contrast:.2f}x WM)")
        else:
            look = "noisy background"
        return (f"{self.name} {self.field_strength_t:g}T {look}; gamma {self.gamma:.2f}, scale {self.scale:.0f}, "
                f"noise {100 * self.noise:.1f} %, bias {self.bias:.3f}")

    def to_dict(self) -> dict:
        """JSON-ready record (the cohort's ``dataset_description.json`` keeps one per site)."""
        out = asdict(self)
        out["kind"] = self.kind
        out["background"] = "zero" if self.skull_stripped else "rician"
        out["description"] = self.describe()
        return out


def _check_site(site) -> int:
    if isinstance(site, bool) or not isinstance(site, (int, np.integer)) or not 1 <= site <= N_SITES:
        raise ValueError(f"site must be an integer 1..{N_SITES}, got {site!r}")
    return int(site)


@lru_cache(maxsize=64)
def _site_kinds(seed: int) -> tuple[str, ...]:
    """The kind of sites 1..N_SITES (index site - 1): KIND_COUNTS, randomly permuted per seed."""
    kinds = [kind for kind, count in KIND_COUNTS.items() for _ in range(count)]
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SITE_PROFILE_KEY,)))
    return tuple(kinds[k] for k in rng.permutation(len(kinds)))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def site_profile(seed: int, site: int) -> SiteProfile:
    """The scanner profile of site ``site`` (1..30) in the cohort with ``seed`` (deterministic)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return _site_profile(int(seed), _check_site(site))


@lru_cache(maxsize=1024)
def _site_profile(seed: int, site: int) -> SiteProfile:
    kind = _site_kinds(seed)[site - 1]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SITE_PROFILE_KEY, site)))
    # Every value is drawn at every site, in a fixed order, so one value never shifts another.
    field = FIELD_STRENGTHS_T[int(rng.integers(2))]
    gamma = _log_uniform(rng, *GAMMA_RANGE)
    scale = _log_uniform(rng, *SCALE_RANGE)
    noise = _log_uniform(rng, *NOISE_RANGE[field])
    bias = float(rng.uniform(*BIAS_RANGE[field]))
    gap, thickness, contrast = (float(rng.uniform(*r)) for r in (SHELL_GAP_MM, SHELL_THICKNESS_MM, SHELL_CONTRAST))
    shell = kind == NOISY_SHELL
    return SiteProfile(site=site, field_strength_t=field, skull_stripped=kind == SKULL_STRIPPED, shell=shell,
                       gamma=gamma, scale=scale, noise=noise, bias=bias,
                       shell_gap_mm=gap if shell else None, shell_thickness_mm=thickness if shell else None,
                       shell_contrast=contrast if shell else None)


def cohort_sites(n_subjects: int) -> list[int]:
    """Sites (1..30) holding at least one of the first ``n_subjects`` subjects (subject i: i % 30 + 1)."""
    return list(range(1, min(int(n_subjects), N_SITES) + 1))


def cohort_profiles(seed: int, n_subjects: int) -> dict[str, dict]:
    """``{"R001": profile.to_dict(), ...}`` for the sites of a cohort (its description's SiteProfiles)."""
    return {site_profile(seed, s).name: site_profile(seed, s).to_dict() for s in cohort_sites(n_subjects)}

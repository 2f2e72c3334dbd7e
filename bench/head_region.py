#!/usr/bin/env python3
"""Seconds per volume of the T1 normalisation under ``convert.head_region``: ``nonzero`` (the old
rule) against ``robust`` (:mod:`strokeseg.data.head_region`), and their ratio, in one run.

The brain is a synthetic cohort subject's (``synthesize_subject(2022, 0)``: int16, 197×233×189, MNI
grid, inside its ``brain`` mask), or with ``--template`` nilearn's MNI152 template ×1000 with Rician
noise in the brain. It is timed on an exact-zero background and on the backgrounds the robust rule is for:
Rician noise outside the brain (sigma 3 % of white matter), and the same plus a bright shell (1.3×
white matter, 4 mm thick, 4 mm outside the brain).
Both grids are timed: the MNI grid (the template brain mask is the outline) and the same voxels
under a shifted affine (off the grid: the outline comes from the intensities). Figures are the
median of ``--repeats`` calls after one untimed call (which loads the template mask once per
process, as conversion and predict do), output in uint8 as the stores hold it. ``region`` is the
robust rule's region search alone (:func:`strokeseg.data.head_region.window_values`). ``dev`` is what
the rule is for: the mean absolute difference of the brain's normalised intensities (float32, 0..255)
from those of the exact-zero background, per rule.

    python bench/head_region.py                 # target: robust - nonzero well under 0.1 s
    python bench/head_region.py --template --repeats 9
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from strokeseg.data.head_region import window_values  # noqa: E402
from strokeseg.data.normalization import volume_robust  # noqa: E402

WM_FRACTION = 0.03       # background noise sigma, of white matter
SHELL = 1.3              # shell intensity, of white matter
SHELL_GAP_MM, SHELL_MM = 4.0, 4.0


def base_volume(template: bool, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(int16 T1 with an exact-zero background, affine, description)."""
    if not template:
        from strokeseg.data.synthetic import synthesize_subject

        subject = synthesize_subject(2022, 0)
        t1 = np.asarray(subject.t1)
        return np.where(subject.brain, t1, 0).astype(t1.dtype), np.asarray(subject.affine, float), \
            "synthesize_subject(2022, 0).t1 (its brain)"
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    t1 = np.asarray(img.dataobj, dtype=np.float32) * 1000
    brain = t1 > 0
    rng = np.random.default_rng(seed)
    t1[brain] = _rician(t1[brain], 0.02 * np.percentile(t1[brain], 95), rng)
    return np.rint(t1).astype(np.int16), np.asarray(img.affine, float), "MNI152 template x1000, Rician noise"


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def backgrounds(t1: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    brain = t1 > 0
    wm = float(np.percentile(t1[brain], 95))
    noisy = t1.copy()
    noisy[~brain] = np.rint(_rician(np.zeros(int((~brain).sum()), np.float32), WM_FRACTION * wm, rng))
    distance = ndimage.distance_transform_edt(~brain)
    shell = (distance > SHELL_GAP_MM) & (distance <= SHELL_GAP_MM + SHELL_MM)
    shelled = noisy.copy()
    shelled[shell] = np.rint(_rician(np.full(int(shell.sum()), SHELL * wm, np.float32), WM_FRACTION * wm, rng))
    return {"zero background": t1, "noisy background": noisy, "noise + shell": shelled}


def seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", action="store_true", help="use the MNI template, not a synthetic subject")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t1, affine, what = base_volume(args.template, args.seed)
    shifted = affine.copy()
    shifted[:3, 3] += 0.5
    percentiles = (0.5, 99.5)
    print(f"volume: {what}, {'x'.join(map(str, t1.shape))} {t1.dtype}; median of {args.repeats} calls, "
          f"uint8 output")
    print("deviation: mean |difference| of the brain's normalised intensities (float32, 0..255) from the "
          "exact-zero background's, per rule")
    print(f"{'volume':<18} {'grid':<5} {'nonzero s':>10} {'robust s':>10} {'ratio':>6} {'extra s':>8} "
          f"{'region s':>9} {'dev nonzero':>12} {'dev robust':>11}")
    volumes = backgrounds(t1, args.seed)
    brain = t1 > 0
    for name, volume in volumes.items():
        old = seconds(partial(volume_robust, volume, percentiles, "uint8", "nonzero"), args.repeats)
        for grid, grid_affine in (("MNI", affine), ("off", shifted)):
            new = seconds(partial(volume_robust, volume, percentiles, "uint8", "robust", grid_affine), args.repeats)
            region = seconds(partial(window_values, volume, "robust", grid_affine), args.repeats)
            deviations = [deviation(volumes["zero background"], volume, brain, rule, grid_affine)
                          for rule in ("nonzero", "robust")]
            print(f"{name:<18} {grid:<5} {old:>10.4f} {new:>10.4f} {new / old:>6.2f} {new - old:>8.4f} "
                  f"{region:>9.4f} {deviations[0]:>12.3f} {deviations[1]:>11.3f}")
    return 0


def deviation(reference: np.ndarray, volume: np.ndarray, brain: np.ndarray, rule: str, affine: np.ndarray) -> float:
    """Mean absolute difference on the brain between ``volume`` and ``reference`` normalised by ``rule``."""
    a, b = (volume_robust(v, (0.5, 99.5), "float32", rule, affine)[brain] for v in (reference, volume))
    return float(np.abs(a.astype(np.float64) - b).mean())


if __name__ == "__main__":
    sys.exit(main())

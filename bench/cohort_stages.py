#!/usr/bin/env python3
"""Benchmark of stages 01-03 on a multimodal cohort with a grid per subject (ISLES'22's size and shape).

Builds (or reuses) a synthetic multimodal cohort of N subjects (default 250, ISLES'22's training
set) in the ISLES'22 BIDS layout: DWI + ADC at about 2 mm, a grid and orientation per subject. It
measures the floor, reading every volume (DWI, ADC, mask) once with nibabel in one process, then
runs stages 01, 02 and 03 through their real ``run.py`` (the ``isles22`` reader, the
target-spacing grid plan, two-channel stores) in an emptied workdir, and prints wall time, peak RSS
of each stage's process tree, disk written and the ratio to the floor.
Targets on the 2-core reference machine: 01-03 within 3x the floor, peak RSS under 3 GB.

    python bench/cohort_stages.py                       # 250 subjects, cache in bench/cache/
    python bench/cohort_stages.py --n-subjects 40 --workdir /tmp/bench_mm
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data_stages import disk_bytes, ensure_cohort, run_measured  # noqa: E402

from strokeseg.contracts import CONVERT, DATASET, FOLDERS  # noqa: E402
from strokeseg.data import readers, synthetic_multimodal  # noqa: E402

STAGES = FOLDERS[:FOLDERS.index(CONVERT) + 1]     # 01 -> 03


def read_floor(folder: Path) -> tuple[float, int]:
    """Seconds to read every channel and mask once with nibabel in one process, and the number of files."""
    cohort = readers.read_cohort(folder, "isles22")
    files = [path for s in cohort.subjects for path in (*(p for _, p in s.channels), s.mask)]
    start = time.perf_counter()
    for path in files:
        np.asanyarray(nib.load(str(path)).dataobj)
    return time.perf_counter() - start, len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=250)
    parser.add_argument("--seed", type=int, default=2022, help="synthetic cohort seed")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache")
    parser.add_argument("--workdir", type=Path, default=None, help="default: <cache>/workdir_multimodal_<N>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cohort = args.cache / f"synthetic_multimodal_{args.n_subjects}"
    workdir = args.workdir or args.cache / f"workdir_multimodal_{args.n_subjects}"
    generated = ensure_cohort(cohort, args.n_subjects, args.seed, os.cpu_count() or 1,
                              synthetic_multimodal.generate_multimodal_cohort,
                              synthetic_multimodal.MULTIMODAL_GENERATOR_VERSION)
    print(f"cohort: {cohort} ({args.n_subjects} SYNTHETIC patients, {disk_bytes(cohort) / 1e9:.2f} GB)"
          + (f", generated in {generated:.0f} s" if generated is not None else ", reused"))
    floor, n_files = read_floor(cohort)
    print(f"floor: read every volume once with nibabel (1 process, {n_files} files): {floor:.1f} s")

    shutil.rmtree(workdir, ignore_errors=True)     # a first run of the stages (see data_stages.py)
    overrides = [a for o in args.overrides for a in ("--set", o)]
    rows = []
    for stage in STAGES:
        command = [sys.executable, str(ROOT / stage / "run.py"), "--workdir", str(workdir), "--quiet"]
        if stage == DATASET:
            command += ["--dataset", "isles22", "--data-dir", str(cohort), *overrides]
        seconds, peak = run_measured(command)
        rows.append((stage, seconds, peak, disk_bytes(workdir / stage)))
        print(f"  {stage:<24} {seconds:8.1f} s  peak RSS {peak / 1e9:5.2f} GB  "
              f"disk {rows[-1][3] / 1e9:6.2f} GB  {seconds / floor:5.2f}x floor", flush=True)

    total = sum(r[1] for r in rows)
    peak = max(r[2] for r in rows)
    plan = (workdir / DATASET / "grid_plan.json").read_text()
    print()
    print(f"{'stage':<24} {'wall s':>8} {'x floor':>8} {'peak RSS GB':>12} {'disk GB':>8}")
    for stage, seconds, rss, disk in rows:
        print(f"{stage:<24} {seconds:8.1f} {seconds / floor:8.2f} {rss / 1e9:12.2f} {disk / 1e9:8.2f}")
    print(f"{'01-03':<24} {total:8.1f} {total / floor:8.2f}   target <= 3.00x floor")
    print(f"peak RSS over the stages: {peak / 1e9:.2f} GB (target < 3 GB); floor {floor:.1f} s; "
          f"{os.cpu_count()} CPU cores")
    print("grid plan:", " ".join(plan.split()))


if __name__ == "__main__":
    main()

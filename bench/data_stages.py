#!/usr/bin/env python3
"""Benchmark of the data stages 01-06 on a synthetic ATLAS-sized cohort.

Builds (or reuses) a synthetic cohort of N subjects (default 655, ATLAS v2.0's size) in the ATLAS
layout, measures the floor — reading every volume (T1 and mask) once with nibabel, in one process —
then runs each stage's real ``run.py`` as a subprocess, in a workdir emptied first (a first run of
the stages), and prints wall time, peak RSS of the stage's process tree (sampled from /proc, workers
included), disk written, and the ratio to the floor.
Targets on the 2-core reference machine: 01-04 within 2x the floor, 01-06 under 20 minutes, peak
RSS under 3 GB.

    python bench/data_stages.py                 # 655 subjects, cache in bench/cache/
    python bench/data_stages.py --n-subjects 40 --workdir /tmp/bench40
    python bench/data_stages.py --locations-ab  # stage 01 without, then with the lesion locations

``--locations-ab`` times stage 01 alone, ``--rounds`` times each way (``dataset.lesion_locations``
false, then true, alternating), each in a fresh workdir (the atlas cache included, so building the
atlas is counted), and prints the medians and their ratio (target: locations add at most 20 %). It
reuses a cached cohort of any generator version: every version has the same masks, and stage 01
only validates the T1 volumes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from strokeseg.contracts import DATASET, FOLDERS, PREPARATION  # noqa: E402
from strokeseg.data import synthetic  # noqa: E402
from strokeseg.data.cohort import discover  # noqa: E402
from strokeseg.data.nifti import load_image  # noqa: E402

DATA_STAGES = FOLDERS[:FOLDERS.index(PREPARATION) + 1]     # 01 -> 06


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak tree RSS of a command (fails loudly on a non-zero exit)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return elapsed, peak


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ensure_cohort(folder: Path, n_subjects: int, seed: int, workers: int, generate=synthetic.generate_cohort,
                  version: int | None = synthetic.GENERATOR_VERSION) -> float | None:
    """A synthetic cohort at 1 mm in ``folder`` (generated unless one with these parameters is there);
    the generation seconds, or None when reused. ``generate``/``version``: the generator's flavour
    (``version`` None: any version)."""
    wanted = {"n_subjects": n_subjects, "seed": seed, "downsample": 1}
    if version is not None:
        wanted["GeneratorVersion"] = version
    found = synthetic.cohort_parameters(folder) if folder.exists() else None
    if found is not None and all(found.get(k) == v for k, v in wanted.items()):
        return None
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    start = time.perf_counter()
    generate(staging, n_subjects, seed, downsample=1, workers=workers, progress=True)
    staging.rename(folder)
    return time.perf_counter() - start


def read_floor(folder: Path, read=lambda path: np.asanyarray(nib.load(str(path)).dataobj)) -> float:
    """Seconds to read every T1 and mask once in one process (the I/O + gunzip floor); by default
    with nibabel's own reader (Python's gzip)."""
    start = time.perf_counter()
    for subject in discover(folder):
        for path in (subject.t1w, subject.mask):
            read(path)
    return time.perf_counter() - start


def package_read(path: Path) -> np.ndarray:
    """A volume as the stages read it (strokeseg.data.nifti.load_image: ISA-L gunzip, checked to the end)."""
    return np.asanyarray(load_image(path).dataobj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=655)
    parser.add_argument("--seed", type=int, default=2022, help="synthetic cohort seed")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache")
    parser.add_argument("--workdir", type=Path, default=None, help="default: <cache>/workdir_<N>")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the stages' outputs (about 33 GB at 655 subjects); by default they are "
                             "removed at the end and only the cohort stays cached")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--locations-ab", action="store_true",
                        help="time stage 01 without and with the lesion locations (see above)")
    parser.add_argument("--rounds", type=int, default=1, help="--locations-ab: runs of each way")
    args = parser.parse_args()

    cohort = args.cache / f"synthetic_{args.n_subjects}"
    workdir = args.workdir or args.cache / f"workdir_{args.n_subjects}"
    if args.locations_ab:
        ensure_cohort(cohort, args.n_subjects, args.seed, os.cpu_count() or 1, version=None)
        locations_ab(cohort, workdir, args)
        return
    generated = ensure_cohort(cohort, args.n_subjects, args.seed, os.cpu_count() or 1)
    print(f"cohort: {cohort} ({args.n_subjects} SYNTHETIC subjects, {disk_bytes(cohort) / 1e9:.2f} GB)"
          + (f", generated in {generated:.0f} s" if generated is not None else ", reused"))
    floor = read_floor(cohort)
    print(f"floor: read every volume once with nibabel (1 process): {floor:.1f} s")
    package_floor = read_floor(cohort, package_read)
    print(f"       the same with the stages' reader (ISA-L gunzip): {package_floor:.1f} s "
          f"({package_floor / floor:.2f}x nibabel's)")

    # Time a first run of the stages: outputs of an earlier benchmark run would otherwise sit in
    # the page cache and on disk while the new ones are written, and be unlinked at publication.
    shutil.rmtree(workdir, ignore_errors=True)
    overrides = [a for o in args.overrides for a in ("--set", o)]
    rows = []
    for stage in DATA_STAGES:
        command = [sys.executable, str(ROOT / stage / "run.py"), "--workdir", str(workdir), "--quiet"]
        if stage == DATASET:
            command += ["--atlas-dir", str(cohort), "--profile", args.profile, *overrides]
        seconds, peak = run_measured(command)
        rows.append((stage, seconds, peak, disk_bytes(workdir / stage)))
        print(f"  {stage:<24} {seconds:8.1f} s  peak RSS {peak / 1e9:5.2f} GB  "
              f"disk {rows[-1][3] / 1e9:6.2f} GB  {seconds / floor:5.2f}x floor", flush=True)
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    first_four = sum(r[1] for r in rows[:4])
    total = sum(r[1] for r in rows)
    peak = max(r[2] for r in rows)
    print()
    print(f"{'stage':<24} {'wall s':>8} {'x floor':>8} {'peak RSS GB':>12} {'disk GB':>8}")
    for stage, seconds, rss, disk in rows:
        print(f"{stage:<24} {seconds:8.1f} {seconds / floor:8.2f} {rss / 1e9:12.2f} {disk / 1e9:8.2f}")
    print(f"{'01-04':<24} {first_four:8.1f} {first_four / floor:8.2f}   target <= 2.00x floor "
          f"({first_four / package_floor:.2f}x the stages' own read floor)")
    print(f"{'01-06':<24} {total:8.1f} {total / floor:8.2f}   target < 1200 s")
    print(f"peak RSS over all stages: {peak / 1e9:.2f} GB (target < 3 GB); floor {floor:.1f} s "
          f"(stages' reader {package_floor:.1f} s); "
          f"{os.cpu_count()} CPU cores")


def locations_ab(cohort: Path, workdir: Path, args: argparse.Namespace) -> None:
    """Stage 01 without and with the lesion locations, alternating, each in a fresh workdir."""
    times: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, int] = {False: 0, True: 0}
    for _ in range(args.rounds):
        for locate in (False, True):
            shutil.rmtree(workdir, ignore_errors=True)
            command = [sys.executable, str(ROOT / DATASET / "run.py"), "--workdir", str(workdir), "--quiet",
                       "--atlas-dir", str(cohort), "--profile", args.profile,
                       *[a for o in args.overrides for a in ("--set", o)],
                       "--set", f"dataset.lesion_locations={'true' if locate else 'false'}"]
            seconds, peak = run_measured(command)
            times[locate].append(seconds)
            peaks[locate] = max(peaks[locate], peak)
            print(f"  stage 01 {'with' if locate else 'without'} locations: {seconds:7.1f} s  "
                  f"peak RSS {peak / 1e9:5.2f} GB", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    without, with_ = (float(np.median(times[k])) for k in (False, True))
    print(f"stage 01, {args.n_subjects} subjects, median of {args.rounds}: without {without:.1f} s, "
          f"with {with_:.1f} s: {with_ / without:.3f}x (target <= 1.20x); peak RSS {peaks[True] / 1e9:.2f} GB "
          f"with, {peaks[False] / 1e9:.2f} GB without; {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()

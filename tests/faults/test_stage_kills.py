"""Stages 01 and 03 killed at a random point, then rerun: no scratch is left anywhere below the workdir and the
stage's outputs are byte for byte an uninterrupted run's.

The uninterrupted reference runs of stages 01 and 03 are ``python -m strokeseg`` subprocesses, timed from the
moment their first scratch file or folder appears (the imports before it write nothing) to their exit; the
synthetic cohort's is in-process, its whole duration the window. A killed run is the same command, killed after
a delay drawn from a seeded RNG within that window; the rerun is in-process. A draw that comes after the stage's
work is done (the reference was slower) is drawn again within half the span, from the workdir as it was.
"""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from strokeseg.cli import main

from conftest import TINY_OVERRIDES, write_tiny_cohort
from faults.catalogue import scratch_left, snapshot

REPO = Path(__file__).resolve().parents[2]
SETTINGS = [a for o in TINY_OVERRIDES for a in ("--set", o)]
DATASET, SPLITTING, CONVERT = "01_dataset", "02_splitting", "03_convert"
SYNTHETIC = ["--n-subjects", "4", "--downsample", "8"]


def argv(command: str, workdir: Path, *extra: str) -> list[str]:
    first = ["--workers", "1", *SETTINGS] if command == "dataset" else []
    return [command, "--workdir", str(workdir), "--quiet", *first, *extra]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "strokeseg", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def first_scratch(process: subprocess.Popen, workdir: Path) -> float:
    """The time the process's first scratch appeared below ``workdir``; fails when it exits before."""
    while process.poll() is None:
        if workdir.exists() and scratch_left(workdir):
            return time.monotonic()
        time.sleep(0.005)
    pytest.fail(f"exited ({process.returncode}) before writing anything: {process.stderr.read()}")


def timed_run(args: list[str], workdir: Path) -> float:
    """Run to completion; the seconds from the first scratch to the exit."""
    process = start(args)
    begun = first_scratch(process, workdir)
    _, err = process.communicate()
    assert process.returncode == 0, err
    return time.monotonic() - begun


def interrupt(args: list[str], workdir: Path, window: float, seed: int, sig=signal.SIGKILL) -> tuple[int, str]:
    """Start the command and send ``sig`` a random delay after its first scratch; (exit status, stderr).

    A draw can land after the stage's work is done: the process has exited, or it is exiting, where the signal
    finds Python's default handler back (status ``-sig``) or the kernel already tearing the process down (0).
    Such a try is repeated from the workdir as it was before the first, with a delay drawn within half the span."""
    rng = random.Random(seed)
    span = window
    before = workdir.with_name(f"{workdir.name}_before")
    if workdir.exists():
        shutil.copytree(workdir, before)
    for _ in range(5):
        process = start(args)
        begun = first_scratch(process, workdir)
        time.sleep(max(0.0, begun + rng.uniform(0, span) - time.monotonic()))
        signalled = process.poll() is None
        if signalled:
            process.send_signal(sig)
        _, err = process.communicate()
        finished_first = not signalled or process.returncode == 0 or (
            process.returncode == -sig and sig != signal.SIGKILL)
        if not finished_first:
            return process.returncode, err
        span /= 2
        shutil.rmtree(workdir)
        if before.exists():
            shutil.copytree(before, workdir)
    pytest.fail(f"{args[0]} always finished before the signal (window {window:.2f} s)")


@dataclass
class Reference:
    workdir: Path
    window: float                   # seconds from the stage's first scratch to its exit
    outputs: dict[str, str]         # snapshot of the stage's folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kills") / "cohort"
    write_tiny_cohort(root, 8)
    return root


# Two references, each made where a test needs it: pytest-xdist may run the tests of stage 01 and of stage 03 on
# different workers.
@pytest.fixture(scope="module")
def reference_01(cohort, tmp_path_factory) -> Reference:
    """An uninterrupted stage 01 (a timed subprocess) on the tiny cohort."""
    workdir = tmp_path_factory.mktemp("reference_01")
    window = timed_run(argv("dataset", workdir, "--atlas-dir", str(cohort)), workdir)
    return Reference(workdir, window, snapshot(workdir / DATASET))


@pytest.fixture(scope="module")
def reference_03(cohort, tmp_path_factory) -> Reference:
    """Stages 01 and 02 in-process, then an uninterrupted stage 03 (a timed subprocess)."""
    workdir = tmp_path_factory.mktemp("reference_03")
    assert main(argv("dataset", workdir, "--atlas-dir", str(cohort))) == 0
    assert main(argv("splitting", workdir)) == 0
    window = timed_run(argv("convert", workdir), workdir)
    return Reference(workdir, window, snapshot(workdir / CONVERT))


def check_rerun(workdir: Path, args: list[str], reference_outputs: dict[str, str], stage: str) -> None:
    assert main(args) == 0
    assert scratch_left(workdir) == []
    assert snapshot(workdir / stage) == reference_outputs


def test_stage_01_killed(cohort, reference_01, tmp_path):
    workdir = tmp_path / "work"
    args = argv("dataset", workdir, "--atlas-dir", str(cohort))
    status, err = interrupt(args, workdir, reference_01.window, seed=101)
    assert status == -signal.SIGKILL, err
    check_rerun(workdir, args, reference_01.outputs, DATASET)


def test_stage_01_terminated_exits_cleanly(cohort, reference_01, tmp_path):
    """SIGTERM unwinds the run (cli's handler): status 143, one line, no scratch even before the rerun."""
    workdir = tmp_path / "work"
    args = argv("dataset", workdir, "--atlas-dir", str(cohort))
    status, err = interrupt(args, workdir, reference_01.window, seed=7, sig=signal.SIGTERM)
    assert status == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: terminated"), err
    assert scratch_left(workdir) == []
    assert not (workdir / DATASET / "manifest.json").exists()
    check_rerun(workdir, args, reference_01.outputs, DATASET)


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over_earlier_outputs"])
def test_stage_03_killed(reference_03, tmp_path, earlier):
    """Also killed while replacing complete earlier outputs (StageWriter's publishing is every stage's)."""
    workdir = tmp_path / "work"
    for stage in (DATASET, SPLITTING) + ((CONVERT,) if earlier else ()):
        shutil.copytree(reference_03.workdir / stage, workdir / stage)
    args = argv("convert", workdir)
    status, err = interrupt(args, workdir, reference_03.window, seed=303 + earlier)
    assert status == -signal.SIGKILL, err
    check_rerun(workdir, args, reference_03.outputs, CONVERT)


def test_synthetic_cohort_generation_killed(tmp_path):
    """Stage 01 with the synthetic cohort (generated into 01_dataset/ first), killed, rerun: the published cohort
    and outputs are an uninterrupted run's. The cohort's paths name the workdir, so both runs use one path."""
    workdir = tmp_path / "work"
    args = argv("dataset", workdir, *SYNTHETIC)
    begun = time.monotonic()
    assert main(args) == 0
    window = time.monotonic() - begun
    uninterrupted = snapshot(workdir / DATASET)
    shutil.rmtree(workdir)
    status, err = interrupt(args, workdir, window, seed=11)
    assert status == -signal.SIGKILL, err
    check_rerun(workdir, args, uninterrupted, DATASET)

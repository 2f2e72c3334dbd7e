"""Fault catalogue, ``strokeseg predict`` killed with SIGKILL at a random (seeded) point: right after the
kill the output folder and its predictions.csv agree (every row ok, failed or pending; every mask,
probability map or lesions table present belongs to an ok row), and a rerun removes the killed run's scratch and
writes exactly what an uninterrupted run writes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg import cli, scratch
from strokeseg.config import PLANES
from strokeseg.data.grid_plan import NativeGrid, make_plan
from strokeseg.infer import predict

from faults.catalogue import scratch_left
from helpers import save_models

SHAPE = (16, 16, 12)
AFFINE = np.array([[1.0, 0, 0, -8], [0, 1.0, 0, -8], [0, 0, 1.0, -6], [0, 0, 0, 1]])
CASES = 6
SEED = 1
# One slice per model call, with flip TTA: a few seconds of cases, so that the kill lands among them.
SLOW = ["--batch-size", "1", "--flip-tta", "--quiet"]
REPOSITORY = Path(__file__).resolve().parents[2]


def volume(seed: int) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    rng = np.random.default_rng(seed)
    head = (grid ** 2).sum(axis=0) < 0.8
    data = np.where(head, rng.normal(300, 20, SHAPE), 0.0)
    centre = rng.uniform(-0.3, 0.3, 3)
    blob = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) < rng.uniform(0.02, 0.08)
    data[blob & head] = rng.normal(800, 20, int((blob & head).sum()))
    return data.astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(models, inputs folder, the output of an uninterrupted run, its exit status)."""
    root = tmp_path_factory.mktemp("predict_kill")
    models = save_models(root / "models", {"axial.keras": 1, "sagittal.keras": 1, "coronal.keras": 1})
    make_plan([NativeGrid(SHAPE, AFFINE)], "fixed", ("t1w",), ("t1",), PLANES).write(models)
    inputs = root / "in"
    inputs.mkdir()
    for i in range(CASES):
        nib.save(nib.Nifti1Image(volume(i), AFFINE), inputs / f"case{i}.nii.gz")
    nib.save(nib.Nifti1Image(np.full(SHAPE, 5, np.int16), AFFINE), inputs / "case9_constant.nii.gz")  # fails
    reference = root / "reference"
    status = cli.main(["predict", str(inputs), "--models", str(models), "--output", str(reference), *SLOW])
    assert status == 1
    return models, inputs, reference, status


def table_without_seconds(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / predict.CSV_NAME, keep_default_na=False).drop(columns="seconds")


def outputs(folder: Path) -> dict[str, bytes]:
    suffixes = (predict.MASK_SUFFIX, predict.PROBABILITY_SUFFIX, predict.LESIONS_SUFFIX)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.endswith(suffixes)}


def done(table: Path) -> int:
    """Rows of the table that are no longer pending (the table may be replaced while it is read)."""
    try:
        return int((pd.read_csv(table)["status"] != "pending").sum())
    except (OSError, ValueError, KeyError):
        return 0


def assert_consistent(folder: Path) -> None:
    """Every row ok/failed/pending; every mask, probability map or lesions table present belongs to an ok row."""
    table = pd.read_csv(folder / predict.CSV_NAME, keep_default_na=False)
    assert set(table["status"]) <= {"ok", "failed", "pending"}, table
    ok = set(table.loc[table["status"] == "ok", "case"])
    for name in outputs(folder):
        case = name.removesuffix(predict.MASK_SUFFIX).removesuffix(predict.PROBABILITY_SUFFIX) \
            .removesuffix(predict.LESIONS_SUFFIX)
        assert case in ok, (name, table[["case", "status"]].to_dict("records"))
    pending = table[table["status"] == "pending"]
    assert all("not processed yet" in m for m in pending["message"])


def test_a_killed_run_leaves_a_consistent_folder_and_a_rerun_repairs_it(world, tmp_path):
    models, inputs, reference, status = world
    out = tmp_path / "out"
    shutil.copytree(reference, out)                       # an earlier run's outputs, as a user would have
    shutil.copy(reference / "case0_mask.nii.gz", out / "case1_probability.nii.gz")   # and a stale map
    table = out / predict.CSV_NAME
    first = os.stat(table).st_ino
    # A seeded point among the cases: after the k-th case's row, a seeded part of one case's time.
    rng = np.random.default_rng(SEED)
    after, part = int(rng.integers(0, CASES)), float(rng.uniform(0.0, 1.0))
    per_case = float(pd.read_csv(reference / predict.CSV_NAME)["seconds"].mean())

    process = subprocess.Popen([sys.executable, "-m", "strokeseg.cli", "predict", str(inputs), "--models",
                                str(models), "--output", str(out), *SLOW], cwd=REPOSITORY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and \
            (os.stat(table).st_ino == first or done(table) < after):
        time.sleep(0.005)                    # until the run's table is written and has `after` finished rows
    time.sleep(part * per_case)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert "Traceback" not in stderr, stderr
    assert_consistent(out)

    # What a killed run can leave: a scratch file of a process that no longer runs.
    leftover = out / f".case2_mask.nii.gz.{scratch.owner_tag().split('.')[0]}.{process.pid}-0123456789ab.tmp.nii.gz"
    leftover.write_bytes(b"half a mask")
    assert scratch.is_scratch(leftover.name)

    assert cli.main(["predict", str(inputs), "--models", str(models), "--output", str(out), *SLOW]) == status
    assert not scratch_left(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert outputs(out) == outputs(reference)
    pd.testing.assert_frame_equal(table_without_seconds(out), table_without_seconds(reference))

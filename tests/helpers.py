"""Helpers shared by test modules of several packages (fixtures live in conftest.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from strokeseg.cli import run_stage as cli_run_stage
from strokeseg.contracts import STAGES
from strokeseg.data.stores import SliceStore
from strokeseg.protocol.batches import compose_batches


class Recorder:
    """A predict function that records every call and delegates to ``fn``."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x):
        assert isinstance(x, np.ndarray) and not isinstance(x, np.memmap)
        assert x.dtype == np.float32 and x.ndim == 4
        self.calls.append(x.shape)
        return self.fn(x)

    @property
    def sizes(self):
        return [shape[0] for shape in self.calls]


PREPARED_LAYOUT = {(1, "train"): 0, (1, "inner_val"): 1, (2, "train"): 2, (2, "inner_val"): 3}


def plan_for(store: SliceStore, subject: str, seed: int) -> pd.DataFrame:
    index = store.index[store.index["subject_name"] == subject]
    lesions = index[index["lesion_pixels"] > 0].rename(columns={"lesion_pixels": "sum_voxel"})
    lesions = lesions.assign(slice_bin=(lesions["sum_voxel"] > 20).astype(int))
    normals = index[(index["lesion_pixels"] == 0) & (index["brain_pixels"] > 0)]
    plan, _ = compose_batches(lesions[["subject_name", "slice", "sum_voxel", "slice_bin"]],
                              normals[["subject_name", "slice"]], 2, 4, 4, seed=seed)
    return plan


def threshold_model(channels=1, level=199.5, input_size=(None, None), filters=1):
    """A fully convolutional 1×1 model: sigmoid(0.1 · (centre channel − level)), i.e. probability
    ≥ 0.5 exactly where the normalised intensity is above ``level``."""
    import keras

    image = keras.Input(shape=(*input_size, channels))
    conv = keras.layers.Conv2D(filters, 1, activation="sigmoid", dtype="float32")
    model = keras.Model(image, conv(image))
    kernel = np.zeros((1, 1, channels, filters), np.float32)
    kernel[0, 0, (channels - 1) // 2, :] = 0.1
    conv.set_weights([kernel, np.full(filters, -0.1 * level, np.float32)])
    return model


def save_models(folder, names_channels, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    for name, channels in names_channels.items():
        threshold_model(channels, **kwargs).save(folder / name)
    return folder


def write_atlas_stores(folder, subjects, convert=None, binarize=False):
    """Stage 03's stores of ATLAS-layout subjects (``strokeseg.data.cohort.discover``), on the fixed
    grid plan of the first subject's grid, as stage 01 plans an ATLAS cohort."""
    import nibabel as nib

    from strokeseg.config import PLANES, ConvertConfig
    from strokeseg.data.grid_plan import NativeGrid, make_plan
    from strokeseg.data.stores import write_stores

    first = nib.load(str(subjects[0].t1w))
    plan = make_plan([NativeGrid(first.shape[:3], first.affine)], "fixed", ("t1w",), ("t1",), PLANES)
    frame = pd.DataFrame({"subject_name": [s.subject for s in subjects], "t1w": [str(s.t1w) for s in subjects],
                          "mask": [str(s.mask) for s in subjects]})
    return write_stores(folder, frame, plan, convert or ConvertConfig(), binarize, 1, progress=False)


def train_killed_after_epoch_1(spec, monkeypatch) -> None:
    """Train ``spec`` as if killed right after epoch 1 was recorded, then rerun it to the end."""
    import pytest

    import strokeseg.train.loop as training

    save = training.RunState.save

    def save_then_die(self, folder):
        save(self, folder)
        if self.epochs_done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(spec, progress=False)
    assert list(pd.read_csv(spec.folder / "history.csv")["epoch"]) == [1]
    monkeypatch.setattr(training.RunState, "save", save)
    training.train(spec, progress=False)


def checkpoint_arrays(folder) -> list[np.ndarray]:
    """Every array of a run folder's latest checkpoint, in name order."""
    name = sorted(folder.glob("checkpoint_epoch*.npz"))[-1]
    with np.load(name) as data:
        return [data[k] for k in sorted(data.files)]


# Studies through every stage, in this process ---------------------------------------------------------
# ``strokeseg.cli.run_stage`` is what every run.py calls (the run.py entry points themselves run in
# subprocesses in test_end_to_end.py); in this process, a stage does not pay TensorFlow's import again.
ROOT = Path(__file__).resolve().parents[1]
# One-step smoke runs train eagerly: there, tracing a step takes longer than running it (stage 08 of
# test_end_to_end.py: 99 s traced, 44 s eager, on 2 cores). Traced training, as studies run it, is what
# tests/train and tests/stages/test_s08_training.py check.
EAGER = "training.run_eagerly=true"
DATA = ["02_splitting", "03_convert", "04_cross_validation", "05_batch_distribution", "06_preparation"]
BRIEF = ["bins.volume_edges=[0,20,100,\"inf\"]", "bins.axial_edges=[0,5,20,\"inf\"]",
         "bins.sagittal_edges=[0,5,20,\"inf\"]", "bins.coronal_edges=[0,5,20,\"inf\"]", "cv.n_folds=3",
         "batches.batch_size=8", "batches.lesion_per_batch=4", "training.folds=[1]", "training.max_epochs=1",
         "training.steps_per_epoch=1", "training.validation_steps=1", "training.parallel_runs=1", EAGER]
# Where the model is not what a study is about: a 4-filter U-Net is the cheapest to build and trace.
SMALL = BRIEF + ["training.model=unet", "training.model_options={\"base_filters\": 4}"]
COMMAND = {stage.folder: stage.command for stage in STAGES}


def run_stage(stage: str, workdir: Path, *args: str) -> None:
    """``<stage>/run.py --workdir WORKDIR --quiet ARGS``, in this process (its errors: captured stderr)."""
    code = cli_run_stage(COMMAND[stage], ["--workdir", str(workdir), "--quiet", *args], default_workdir=ROOT)
    assert code == 0, stage


def run_study(workdir: Path, *dataset_args: str, overrides: list[str] = SMALL, every_stage: bool = False) -> Path:
    """Stages 01 -> 10 (07 and 09 too with ``every_stage``: a profile's study, as its user runs it)."""
    run_stage("01_dataset", workdir, *dataset_args, "--workers", "1", *[a for o in overrides for a in ("--set", o)])
    for stage in DATA:
        run_stage(stage, workdir)
    config = json.loads((workdir / "06_preparation" / "config.json").read_text())
    if every_stage:
        # the model table is a smoke test here: the cheapest model, the smallest measurement
        run_stage("07_models", workdir, "--quick", "--models", "unet", "--planes", config["training"]["planes"][0],
                  "--matmul-size", "256", "--repeats", "1")
    run_stage("08_training", workdir)
    if every_stage:
        run_stage("09_comparison", workdir)
    run_stage("10_fusion", workdir)
    return workdir


def check_group_disjoint_folds(workdir: Path) -> pd.DataFrame:
    folds = pd.read_csv(workdir / "04_cross_validation" / "folds.csv")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    holdout = set(pd.read_csv(workdir / "02_splitting" / "subjects_20.csv")["group"])
    assert not holdout & set(folds["group"])
    return folds


def check_masks_on_own_grids(workdir: Path, image_column: str) -> pd.DataFrame:
    holdout = pd.read_csv(workdir / "03_convert" / "holdout.csv")
    for row in holdout.itertuples():
        mask = nib.load(workdir / "10_fusion" / "masks" / f"{row.subject_name}_fused_mask.nii.gz")
        image = nib.load(getattr(row, image_column))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    return holdout


def quick_xla_flags() -> str:
    """``XLA_FLAGS`` for a JAX subprocess whose speed is not measured: XLA's LLVM backend optimisation off,
    which shortens compilation (bench/gpu_check.sh --quick --cpu: 104 s -> 73 s on 2 cores)."""
    return " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

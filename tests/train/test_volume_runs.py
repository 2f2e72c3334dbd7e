"""3-D runs through the training loop on the tiny cohort's volume store: a 1/8-width attention U-Net
with deep supervision trains, resumes bit for bit after a kill, saves a one-output inference model,
and is evaluated per test subject by sliding windows."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import strokeseg.train.loop as training
from strokeseg.config import VOLUME
from strokeseg.errors import ConfigError
from strokeseg.train import experiments
from strokeseg.train.recipes import model_training
from strokeseg.workdir import stage_config

SMALL = dict(max_epochs=2, patch_size=(16, 16, 16), patch_batch_size=3, patch_steps=2, patch_validation_steps=1,
             augment=True, folds=(1,))


def specs_for(workdir: Path, root: Path, model: str = "attention_unet3d", **settings) -> list[training.RunSpec]:
    config = stage_config(workdir, "06_preparation")
    config = replace(config, comparison=replace(config.comparison, model_options={model: {"width": 0.125}}))
    run = replace(model_training(config, model, "published"), **{**SMALL, **settings})
    return experiments.run_specs(config, experiments.Inputs.of(workdir), run, run.planes, run.folds, root)


def checkpoint(folder: Path) -> list[np.ndarray]:
    name = sorted(folder.glob("checkpoint_epoch*.npz"))[-1]
    with np.load(name) as data:
        return [data[k] for k in sorted(data.files)]


def test_a_3d_run_is_the_volume_plane_of_its_fold(volume_workdir, tmp_path):
    (spec,) = specs_for(volume_workdir, tmp_path)
    assert spec.plane == VOLUME and spec.folder == tmp_path / "attention_unet3d" / VOLUME / "fold_1"
    folds = pd.read_csv(volume_workdir / "04_cross_validation" / "folds.csv")
    tested = set(folds.loc[folds["fold"] == 1, "subject_name"])
    assert not tested & set(spec.volume.train_subjects + spec.volume.val_subjects)
    assert spec.input_shape == (16, 16, 16, 1) and spec.deep_supervision


def test_without_a_volume_store_a_3d_model_is_refused_before_training(prepared_workdir, tmp_path):
    with pytest.raises(ConfigError, match="volume store .* rerun from stage 03"):
        specs_for(prepared_workdir, tmp_path)


def test_a_killed_3d_run_resumes_bit_for_bit(volume_workdir, tmp_path, monkeypatch):
    # Eager: resuming is the loop's bookkeeping, the same traced or not (test_loop.py resumes a traced 2-D
    # run bit for bit, and the sliding-window test below trains this 3-D model traced). Tracing these three
    # runs took 85 s, training them eagerly 28 s, on 2 cores.
    (straight,) = specs_for(volume_workdir, tmp_path / "straight", run_eagerly=True)
    training.train(straight, progress=False)
    (interrupted,) = specs_for(volume_workdir, tmp_path / "interrupted", run_eagerly=True)
    save = training.RunState.save

    def save_then_die(self, folder):
        save(self, folder)
        if self.epochs_done == 1:
            raise KeyboardInterrupt  # killed right after epoch 1 was recorded

    monkeypatch.setattr(training.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(interrupted, progress=False)
    monkeypatch.setattr(training.RunState, "save", save)
    training.train(interrupted, progress=False)

    for a, b in zip(checkpoint(straight.folder), checkpoint(interrupted.folder), strict=True):
        np.testing.assert_array_equal(a, b)  # weights, optimizer moments, step count, seed states
    history = pd.read_csv(straight.folder / "history.csv")
    columns = ["epoch", "loss", "dice", "val_loss", "val_dice", "learning_rate"]
    pd.testing.assert_frame_equal(history[columns], pd.read_csv(interrupted.folder / "history.csv")[columns])
    assert list(history["epoch"]) == [1, 2] and history[columns].notna().all().all()

    best = training.load_best_model(straight.folder)   # the inference model: main head only
    assert len(best.outputs) == 1 and tuple(best.inputs[0].shape)[1:] == (16, 16, 16, 1)
    trained = keras.saving.load_model(straight.folder / "best.keras", safe_mode=True, compile=False)
    assert not any("scale" in layer.name for layer in trained.layers)


def test_a_3d_run_is_evaluated_on_every_test_subject_by_sliding_windows(volume_workdir, tmp_path):
    # Traced, with deep supervision: the 3-D training that a study runs, evaluated through its one-output model.
    (spec,) = specs_for(volume_workdir, tmp_path, max_epochs=1)
    assert spec.deep_supervision
    inputs = experiments.Inputs.of(volume_workdir)
    assert experiments.train_and_evaluate(spec, inputs, progress=False)
    subjects = pd.read_csv(spec.folder / "test_subjects.csv")
    tested = sorted(inputs.folds.loc[inputs.folds["fold"] == 1, "subject_name"])
    assert list(subjects["subject_name"]) == tested
    assert subjects["dice"].between(0, 1).all() and (subjects["truth_voxels"] > 0).all()
    assert pd.read_csv(spec.folder / "test_slices.csv").empty          # a 3-D model has no slices
    slices, per_subject, runs = experiments.collect([spec], tmp_path)
    tables = experiments.plane_fold_tables(slices, per_subject)
    assert set(tables[("attention_unet3d", VOLUME)]["evaluation"]) == {"subject_3d"}
    best = experiments.best_folds(tables, runs)
    assert best[["model", "plane", "fold"]].values.tolist() == [["attention_unet3d", VOLUME, 1]]

"""Training runs through the real stage-06 pipeline on the tiny cohort: every model trains, a run
resumes exactly, settings are guarded, and best models load in safe mode."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import strokeseg.train.loop as training
from strokeseg.models import model_names
from strokeseg.train.recipes import model_training
from strokeseg.workdir import stage_config

from helpers import checkpoint_arrays, train_killed_after_epoch_1

# LCNN at full width is 96 M parameters; its published width is not what this test is about.
SMALL_OPTIONS = {"lcnn": {"width": 0.125}}


def spec_for(workdir: Path, folder: Path, model: str = "raxnet", **settings) -> training.RunSpec:
    config = stage_config(workdir, "06_preparation")
    config = replace(config, comparison=replace(config.comparison, model_options=SMALL_OPTIONS))
    run = replace(model_training(config, model, "published"), max_epochs=1, steps_per_epoch=2, validation_steps=1)
    run = replace(run, **settings)
    return training.RunSpec(workdir / "06_preparation", "axial", 1, config.cv.n_folds, run, config.seed,
                            False, folder)


@pytest.fixture(scope="module")
def trained_runs(prepared_workdir, tmp_path_factory):
    """``trained_runs(model)``: (spec, final state) of the model's two-step run (``spec_for``'s settings),
    trained once per module: read-only, copy it before training it again."""
    root, runs = tmp_path_factory.mktemp("runs"), {}

    def trained(model: str):
        if model not in runs:
            spec = spec_for(prepared_workdir, root / model, model)
            runs[model] = spec, training.train(spec, progress=False)
        return runs[model]

    return trained


# The loop does not depend on the architecture (LCNN's alignment term aside), so the slowest to trace are
# left out here: LCNN and the ResNet-50 U-Net train through stage 08 and load in stage 10 in their
# profiles' studies (tests/test_profiles.py), X-Net and CLCI-Net train in
# tests/models/test_model_contract.py and reload in safe mode in their own test files; 3-D models:
# test_volume_runs.py.
TESTED_ELSEWHERE = ("lcnn", "resunet", "xnet", "clci")


@pytest.mark.parametrize("model", [m for m in model_names(volumetric=False) if m not in TESTED_ELSEWHERE])
def test_every_model_trains_two_steps_and_its_best_model_loads_in_safe_mode(trained_runs, model):
    spec, state = trained_runs(model)
    history = pd.read_csv(spec.folder / "history.csv")
    assert list(history["epoch"]) == [1] and np.isfinite(history["loss"]).all()
    assert state.stopped == "max_epochs" and state.best_epoch == 1
    best = training.load_best_model(spec.folder)
    images, _ = spec.split("test").batch(0)
    probabilities = keras.ops.convert_to_numpy(best(images[:2].astype("float32"), training=False))
    assert probabilities.shape == (2, *images.shape[1:3], 1) and probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_an_interrupted_run_resumes_exactly_as_if_never_interrupted(prepared_workdir, tmp_path, monkeypatch):
    # Any model: U-Net is the cheapest to trace (three runs are traced here); its published recipe has Adam's
    # moments and a per-step (cosine) schedule to restore, as RAX-Net's has AdamW's and an exponential one.
    settings = dict(max_epochs=3, augment=True)
    straight = spec_for(prepared_workdir, tmp_path / "straight", "unet", **settings)
    training.train(straight, progress=False)

    interrupted = spec_for(prepared_workdir, tmp_path / "interrupted", "unet", **settings)
    train_killed_after_epoch_1(interrupted, monkeypatch)

    for a, b in zip(checkpoint_arrays(straight.folder), checkpoint_arrays(interrupted.folder), strict=True):
        np.testing.assert_array_equal(a, b)  # weights, optimizer moments, step count, seed states
    columns = ["epoch", "loss", "dice", "val_loss", "learning_rate"]
    pd.testing.assert_frame_equal(pd.read_csv(straight.folder / "history.csv")[columns],
                                  pd.read_csv(interrupted.folder / "history.csv")[columns])
    assert len(list(interrupted.folder.glob("checkpoint_epoch*.npz"))) == 1  # stale ones removed


def test_a_finished_run_is_reused_and_other_settings_are_refused(trained_runs, tmp_path):
    finished, _ = trained_runs("raxnet")     # the per-model test's run, trained once by train()
    spec = replace(finished, folder=tmp_path / "run")
    shutil.copytree(finished.folder, spec.folder)
    stamp = (spec.folder / "best.keras").stat().st_mtime_ns
    training.train(spec, progress=False)
    assert (spec.folder / "best.keras").stat().st_mtime_ns == stamp
    (spec.folder / "best.keras").unlink()  # as if killed between the last state and best.keras
    training.train(spec, progress=False)
    assert training.load_best_model(spec.folder) is not None
    other = replace(spec, training=replace(spec.training, learning_rate=0.5))
    with pytest.raises(training.RunSettingsError, match="learning_rate|training"):
        training.train(other, progress=False)


def test_run_eagerly_trains_the_same_run_op_by_op_and_reuses_a_traced_run_folder(trained_runs, tmp_path, monkeypatch):
    import tensorflow as tf

    traced, _ = trained_runs("unet")
    eager = replace(traced, folder=tmp_path / "eager", training=replace(traced.training, run_eagerly=True))
    executing_eagerly = []
    real_get_loss = training.get_loss

    def spying_get_loss(name, **options):
        loss = real_get_loss(name, **options)

        def spy(y_true, y_pred):
            executing_eagerly.append(tf.executing_eagerly())   # a breakpoint here would see concrete values
            return loss(y_true, y_pred)
        return spy

    monkeypatch.setattr(training, "get_loss", spying_get_loss)
    training.train(eager, progress=False)
    assert executing_eagerly and all(executing_eagerly)
    columns = ["loss", "val_loss", "dice"]
    pd.testing.assert_frame_equal(pd.read_csv(eager.folder / "history.csv")[columns],
                                  pd.read_csv(traced.folder / "history.csv")[columns], rtol=1e-4)
    # Whether steps are traced is not a setting of the run: a traced run folder is reused as it is.
    monkeypatch.setattr(training, "get_loss", real_get_loss)
    copy = replace(eager, folder=tmp_path / "copy")
    shutil.copytree(traced.folder, copy.folder)
    stamp = (copy.folder / "best.keras").stat().st_mtime_ns
    training.train(copy, progress=False)
    assert (copy.folder / "best.keras").stat().st_mtime_ns == stamp


def test_early_stopping_and_plateau_follow_the_inner_validation_loss(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    settings = replace(training.TrainingConfig(), patience=2, plateau_factor=0.5, plateau_patience=1,
                       schedule="constant")
    state = training.RunState(settings={})
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.6], start=1):
        training._end_of_epoch(model, state, tmp_path, {"epoch": epoch, "val_loss": val_loss}, settings)
    assert state.best_epoch == 2 and state.best_loss == 0.5
    assert state.stopped == "early_stopping" and state.epochs_done == 4
    assert training._current_lr(model.optimizer) == pytest.approx(0.1 * 0.5 * 0.5)


def test_checkpoints_refuse_a_different_model(tmp_path):
    small = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    large = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    training.save_variables(tmp_path / "c.npz", small.variables)
    with pytest.raises(training.RunSettingsError, match="do not match"):
        training.load_variables(tmp_path / "c.npz", large.variables)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(training.RunSettingsError, match="unreadable"):
        training.load_variables(tmp_path / "bad.npz", small.variables)


def test_fresh_discards_a_run(prepared_workdir, tmp_path):
    from strokeseg.train.experiments import Inputs, train_and_evaluate

    # any model, the cheapest, eagerly: what is checked is the run folder's bookkeeping
    spec = spec_for(prepared_workdir, tmp_path / "run", "unet", model_options={"base_filters": 4}, run_eagerly=True)
    spec.folder.mkdir()
    (spec.folder / "state.json").write_text("{broken")
    with pytest.raises(training.RunSettingsError, match="unreadable run state"):
        training.train(spec, progress=False)
    assert train_and_evaluate(spec, Inputs.of(prepared_workdir), fresh=True, progress=False)
    assert (spec.folder / "test_subjects.csv").is_file()


@pytest.mark.parametrize("loss", ["lcnn", "tversky_plus_focal"])
def test_the_best_model_file_holds_the_training_models_variables_for_lcnn_with_any_loss(loss):
    """best.keras is rebuilt from the best epoch's variables: with LCNN's own loss the training model
    adds a warm-up variable, with another (comparison.recipe=raxnet) it must not expect one."""
    from strokeseg.models import build_model
    from strokeseg.train.losses import get_loss

    settings = replace(training.TrainingConfig(), model="lcnn", model_options={"width": 0.125}, loss=loss)
    trained = training.build_training_model(settings, (32, 32, 3), get_loss(loss))
    inference = build_model("lcnn", (32, 32, 3), width=0.125)
    assert ([tuple(v.shape) for v in training._trained_variables(settings, inference)]
            == [tuple(v.shape) for v in trained.variables])


def test_batchnorm_momentum_reaches_every_batch_norm_layer_only_when_set():
    import keras

    from strokeseg.train.losses import get_loss

    def momenta(**options):
        settings = replace(training.TrainingConfig(), model_options={"width": 0.125}, **options)
        model = training.build_training_model(settings, (32, 32, 1), get_loss("dice"))
        return {layer.momentum for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.BatchNormalization)}

    assert momenta() == {0.99}                              # Keras' default, upstream's
    assert momenta(batchnorm_momentum=0.9) == {0.9}

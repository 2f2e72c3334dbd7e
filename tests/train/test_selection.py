"""Model selection on the mean per-subject Dice of the inner-validation volumes (training.selection)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import strokeseg.train.loop as training
from strokeseg.config import Config, PostprocessConfig
from strokeseg.data.stores import SliceStore
from strokeseg.train import experiments, selection
from strokeseg.train.recipes import model_training
from strokeseg.workdir import stage_config

NONE, LARGEST = PostprocessConfig(), PostprocessConfig("largest")


class _Model:
    """What _end_of_epoch touches of a model: its variables (saved) and its optimizer's rate."""

    def __init__(self):
        self.variables = [np.zeros(2, np.float32)]
        self.optimizer = _Optimizer()


class _Optimizer:
    learning_rate = 1.0
    variables = ()


def test_a_subjects_dice_thresholds_post_processes_and_scores_both_empty_as_one():
    empty = np.zeros((6, 6, 6), np.float32)
    assert selection.subject_dice(empty, empty, NONE) == 1.0
    assert selection.subject_dice(empty, empty, LARGEST) == 1.0
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:3, 1:3, 1:3] = 1                                   # 8 voxels
    assert selection.subject_dice(empty, truth, NONE) == 0.0
    probability = truth * np.float32(0.9)
    probability[1, 1, 1] = 0.5                                 # not above the threshold: 7 of 8 predicted
    without_stray = 2 * 7 / (7 + 8)
    assert selection.subject_dice(probability, truth, NONE) == pytest.approx(without_stray)
    probability[5, 5, 5] = 0.8                                 # a stray voxel, far from the lesion
    with_stray = 2 * 7 / (8 + 8)
    assert selection.subject_dice(probability, truth, NONE) == pytest.approx(with_stray)
    # The largest component alone drops the stray voxel; so does a minimum size of 2, not of 1.
    assert selection.subject_dice(probability, truth, LARGEST) == pytest.approx(without_stray)
    assert selection.subject_dice(probability, truth, PostprocessConfig("min_size", 2)) == pytest.approx(without_stray)
    assert selection.subject_dice(probability, truth, PostprocessConfig("min_size", 1)) == pytest.approx(with_stray)
    # "auto" is chosen at stage 10, after training: selection keeps every component.
    assert selection.subject_dice(probability, truth, PostprocessConfig("auto", 50)) == pytest.approx(with_stray)


def spec_for(workdir: Path, folder: Path, **settings) -> training.RunSpec:
    config = stage_config(workdir, "06_preparation")
    run = replace(model_training(config, "unet", "published"), model_options={"base_filters": 4}, max_epochs=2,
                  steps_per_epoch=1, validation_steps=1, eval_batch_size=8, tensorboard=False, **settings)
    return training.RunSpec(workdir / "06_preparation", "axial", 1, config.cv.n_folds, run, config.seed, False,
                            folder)


def independent_score(workdir: Path, model, subjects: list[str], channels: int, batch_size: int) -> float:
    """Mean Dice of ``model`` over the subjects, from their stored slices: the counts over the cropped
    slices, which need no volume (Dice does not depend on the order of the voxels)."""
    store = SliceStore(workdir / "03_convert" / "axial")
    scores = []
    for subject in subjects:
        rows = store.rows([subject] * store.n_slices, np.arange(store.n_slices))
        images = store.images_at(rows, channels=channels).astype(np.float32)
        predicted = store.canvas.crop(model.predict(images, batch_size=batch_size, verbose=0)[..., 0] > 0.5)
        truth = store.canvas.crop(store.masks_at(rows)) > 0
        total = predicted.sum() + truth.sum()
        scores.append(1.0 if total == 0 else 2 * (predicted & truth).sum() / total)
    return float(np.mean(scores))


def test_a_run_selecting_on_subject_dice_keeps_the_epoch_with_the_best_mean_dice(prepared_workdir, tmp_path):
    spec = spec_for(prepared_workdir, tmp_path / "run", selection="subject_dice", patience=5)
    assert spec.settings()["selection_postprocess"] == {"rule": "none", "min_lesion_voxels": 0}
    state = training.train(spec, progress=False)

    history = pd.read_csv(spec.folder / "history.csv")
    scores = history["val_subject_dice"].to_numpy()
    assert list(history["epoch"]) == [1, 2] and list(history.columns) == list(training.HISTORY_COLUMNS)
    assert np.all((scores >= 0) & (scores <= 1))
    assert state.best_epoch == 1 + int(np.argmax(scores))           # argmax: ties go to the earlier epoch
    assert state.best_score == pytest.approx(scores.max(), abs=1e-9)
    assert state.best_loss == pytest.approx(history["val_loss"].min(), rel=1e-8)   # plateau still on the loss
    best_loss = history.loc[state.best_epoch - 1, "val_loss"]                        # runs.csv: the best epoch's
    assert experiments.run_summary(spec, tmp_path)["best_val_loss"] == pytest.approx(best_loss, rel=1e-8)

    folds = pd.read_csv(prepared_workdir / "04_cross_validation" / "folds.csv")
    inner = pd.read_csv(prepared_workdir / "05_batch_distribution" / "inner_validation.csv")
    subjects = sorted(inner.loc[inner["fold"] != 1, "subject_name"])
    assert subjects == selection.inner_validation_subjects(spec)
    assert not set(subjects) & set(folds.loc[folds["fold"] == 1, "subject_name"])   # never the test fold
    best = training.load_best_model(spec.folder)
    recomputed = independent_score(prepared_workdir, best, subjects, spec.channels, 8)
    assert recomputed == pytest.approx(scores.max(), abs=1e-6)


def test_selecting_on_the_loss_keeps_the_lowest_loss_rule_and_the_settings_of_earlier_runs(tmp_path):
    config = model_training(Config(), "unet", "published")
    spec = training.RunSpec(tmp_path, "axial", 1, 3, config, 0, False, tmp_path, postprocess=LARGEST)
    settings = spec.settings()                              # run folders started before still resume:
    assert "selection_postprocess" not in settings and "selection" not in settings["training"]
    assert "tensorboard" not in settings["training"]          # nor do the logs decide whether a run resumes
    state, model = training.RunState({}), _Model()
    for epoch, loss in enumerate([0.5, 0.4], start=1):
        training._end_of_epoch(model, state, tmp_path, {"epoch": epoch, "val_loss": loss, "val_subject_dice": np.nan},
                               config)
    assert (state.best_epoch, state.best_loss, state.best_score) == (2, 0.4, None)
    # A state.json written before best_score existed loads, and resumes with no best score yet.
    old = {"settings": spec.settings(), "epochs_done": 1, "best_loss": 0.5, "best_epoch": 1, "wait": 0,
           "plateau_wait": 0, "checkpoint": "checkpoint_epoch0001.npz", "best": "best_epoch0001.npz", "stopped": None}
    (tmp_path / "state.json").write_text(json.dumps(old))
    assert training.RunState.load_or_new(tmp_path, spec.settings()).best_score is None


def test_subject_dice_selection_keeps_the_best_score_and_stops_on_it_while_the_plateau_follows_the_loss(tmp_path):
    settings = dict(selection="subject_dice", patience=2, plateau_patience=1, plateau_factor=0.5, min_delta=0.01)
    config = replace(model_training(Config(), "unet", "published"), **settings)
    state, model = training.RunState({}), _Model()
    # epoch: (val_loss, val_subject_dice)
    for epoch, (loss, score) in enumerate([(0.5, 0.30), (0.4, 0.305), (0.45, 0.2)], start=1):
        training._end_of_epoch(model, state, tmp_path, {"epoch": epoch, "val_loss": loss, "val_subject_dice": score},
                               config)
    assert (state.best_epoch, state.best_score, state.best_loss) == (1, 0.30, 0.4)   # 0.305 is within min_delta
    assert state.stopped == "early_stopping" and model.optimizer.learning_rate == 0.5   # one plateau: epoch 3

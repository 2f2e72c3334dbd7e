"""Train-then-evaluate for a set of (model, plane, fold) runs, and the tables that sum them up.

Stages 08 and 09 are the same experiment with different models and settings: each run trains on
the other folds (strokeseg.train.loop), then its best model is evaluated on the test fold in three
ways (strokeseg.evaluate.folds), written beside the run as ``test_slices.csv`` and
``test_subjects.csv``:

- ``slice_upstream``: upstream's per-slice protocol (+1 smoothing, the test fold's 16 lesion +
  16 normal batches, each slice once), so tables are comparable with the paper's;
- ``lesion_slices``: the lesion slices only, no smoothing (what the per-slice numbers hide);
- ``subject_3d``: every slice of each test subject predicted, the volume rebuilt, 3-D metrics.

A 3-D model's runs (its plane is ``volume``) train on patches of stage 03's volume store with the
same folds and inner-validation subjects (strokeseg.train.volume_data); they have no slices, so only
``subject_3d`` is written for them: each test subject predicted by Gaussian-weighted sliding
windows (strokeseg.infer.sliding_window) and scored exactly as the slice runs' rebuilt volumes.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import VOLUME, Config, TrainingConfig
from strokeseg.contracts import (
    BATCHES,
    COHORT_CSV,
    CONVERT,
    CROSS_VALIDATION,
    DATASET,
    FOLDS_CSV,
    INNER_VALIDATION_CSV,
    PREPARATION,
    VOLUME_STORE_DIR,
)
from strokeseg.data.stores import SliceStore
from strokeseg.data.volume_stores import GEOMETRY, VolumeStore
from strokeseg.errors import ConfigError, StrokesegError
from strokeseg.evaluate.folds import (
    SLICE_COLUMNS,
    NativeTruths,
    role_plan,
    slice_evaluation,
    subject_evaluation,
    volume_evaluation,
)
from strokeseg.evaluate.tables import folds_results_table
from strokeseg.models import is_volumetric, slice_channels
from strokeseg.train.loop import BEST_MODEL, RunSpec, RunState, load_best_model, read_history, train
from strokeseg.train.volume_data import VolumeRunData, role_subjects, run_patch
from strokeseg.workdir import grid_plan, read_csv, require_stage, stage_config, write_csv

log = logging.getLogger(__name__)

TEST_SLICES = "test_slices.csv"
TEST_SUBJECTS = "test_subjects.csv"
EVALUATIONS = ("slice_upstream", "lesion_slices", "subject_3d")


@dataclass(frozen=True)
class Inputs:
    """The published data stages a run reads."""
    stores: Path
    folds: pd.DataFrame
    plans: Path
    prepared: Path
    native: NativeTruths | None = None   # subjects with their own grids: scored there (target_spacing plans)

    @classmethod
    def of(cls, workdir: Path) -> "Inputs":
        folds = read_csv(require_stage(workdir, CROSS_VALIDATION) / FOLDS_CSV)
        plan = grid_plan(workdir)
        cohort_csv = require_stage(workdir, DATASET) / COHORT_CSV
        native = (NativeTruths(read_csv(cohort_csv, required=("subject_name", "mask")), plan,
                               stage_config(workdir, DATASET).dataset.binarize_masks)
                  if plan.kind != "fixed" else None)
        return cls(require_stage(workdir, CONVERT), folds, require_stage(workdir, BATCHES),
                   require_stage(workdir, PREPARATION), native)


def run_specs(config: Config, inputs: Inputs, training: TrainingConfig, planes, folds, root: Path) -> list[RunSpec]:
    """One run per (plane, fold) of ``training.model`` under ``root/<model>/<plane>/fold_<k>``; a 3-D
    model has one plane, ``volume``, whatever ``planes`` says."""
    if is_volumetric(training.model):
        return volume_specs(config, inputs, training, folds, root)
    channels = slice_channels(training.model)
    if channels not in config.prepare.channels:
        raise ConfigError(f"{training.model} reads {channels} adjacent slices but stage 06 prepared "
                          f"{list(config.prepare.channels)}; rerun 06 with --set "
                          f"prepare.channels={sorted({*config.prepare.channels, channels})}".replace(" ", ""))
    return [RunSpec(inputs.prepared, plane, fold, config.cv.n_folds, training, config.seed,
                    config.batches.fixed_order, root / training.model / plane / f"fold_{fold}",
                    postprocess=config.postprocess, batch_kind=config.batches.kind)
            for plane in planes for fold in config.training_folds(folds)]


def volume_specs(config: Config, inputs: Inputs, training: TrainingConfig, folds, root: Path) -> list[RunSpec]:
    """One run per fold of a 3-D model under ``root/<model>/volume/fold_<k>``, on stage 03's volume store."""
    store = inputs.stores / VOLUME_STORE_DIR
    if not (store / GEOMETRY).is_file():
        raise ConfigError(f"{training.model} trains on the volume store {store}, which stage 03 writes only when "
                          f"the config selects a 3-D model: rerun from stage 03 with --set "
                          f"training.model={training.model} or comparison.models=[\"{training.model}\"]")
    shape = VolumeStore(store).shape
    patch = run_patch(training, shape)
    inner = set(read_csv(inputs.plans / INNER_VALIDATION_CSV)["subject_name"].astype(str))
    n_folds = config.cv.n_folds
    specs = []
    for fold in config.training_folds(folds):
        data = VolumeRunData(store, *(tuple(role_subjects(inputs.folds, inner, fold, n_folds, role))
                                      for role in ("train", "inner_val")), patch, training.patch_batch_size)
        specs.append(RunSpec(inputs.prepared, VOLUME, fold, n_folds, training, config.seed,
                             config.batches.fixed_order, root / training.model / VOLUME / f"fold_{fold}", data,
                             config.postprocess))
    return specs


def train_and_evaluate(spec: RunSpec, inputs: Inputs, fresh: bool = False, progress: bool = True) -> bool:
    """Train (or resume) one run, then evaluate it on its test fold unless already done.
    Returns False on a non-chief worker, which trains but leaves evaluation to the chief."""
    from strokeseg.train.distribute import worker_info

    if fresh and spec.folder.exists():
        shutil.rmtree(spec.folder)
    train(spec, progress)
    if not worker_info()[2]:
        return False
    if not ((spec.folder / TEST_SLICES).is_file() and (spec.folder / TEST_SUBJECTS).is_file()):
        evaluate(spec, inputs, progress)
    return True


def evaluate(spec: RunSpec, inputs: Inputs, progress: bool = True) -> None:
    """Write the run's ``test_slices.csv`` and ``test_subjects.csv`` from its ``best.keras``."""
    model = load_best_model(spec.folder)
    model.run_eagerly = spec.training.run_eagerly
    batch = spec.training.eval_batch_size

    def predict(images: np.ndarray) -> np.ndarray:
        return model.predict(images, batch_size=batch, verbose=0)

    subjects = sorted(inputs.folds.loc[inputs.folds["fold"] == spec.test_fold, "subject_name"])
    if not subjects:
        raise StrokesegError(f"fold {spec.test_fold} has no subjects in folds.csv")
    if spec.volume is not None:
        # A few windows per call: predict_on_batch spares model.predict's per-call input pipeline.
        per_subject = volume_evaluation(model.predict_on_batch, spec.volume.open(), subjects, spec.volume.patch,
                                        spec.training.patch_batch_size, spec.training.window_step,
                                        native=inputs.native)
        write_csv(pd.DataFrame(columns=list(SLICE_COLUMNS)), spec.folder / TEST_SLICES)
        write_csv(per_subject, spec.folder / TEST_SUBJECTS)
        log.info("%s: evaluated on %d subjects by sliding windows", spec.folder, len(per_subject))
        return
    plan = role_plan(inputs.plans, spec.plane, spec.test_fold, spec.n_folds, role="test")
    slices = slice_evaluation(predict, spec.split("test"), plan, batch)
    store = SliceStore(inputs.stores / spec.plane)
    per_subject = subject_evaluation(predict, store, subjects, batch, channels=spec.channels, native=inputs.native)
    # Written after both are computed, subjects last: its presence marks a finished evaluation.
    write_csv(slices, spec.folder / TEST_SLICES)
    write_csv(per_subject, spec.folder / TEST_SUBJECTS)
    log.info("%s: evaluated on %d test slices and %d subjects", spec.folder, len(slices), len(per_subject))


# Collecting ----------------------------------------------------------------------------------------
def _labelled(frame: pd.DataFrame, spec: RunSpec, **labels) -> pd.DataFrame:
    frame = frame.copy()
    for name, value in reversed([("model", spec.training.model), ("plane", spec.plane),
                                 ("fold", spec.test_fold), *labels.items()]):
        frame.insert(0, name, value)
    return frame


def collect(specs: list[RunSpec], root: Path, **labels) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-slice rows, per-subject 3-D rows, one summary row per run) of finished runs, labelled
    with model, plane and fold (and ``labels``, e.g. the loss); model files relative to ``root``."""
    slices, subjects, runs = [], [], []
    for spec in specs:
        slices.append(_labelled(read_csv(spec.folder / TEST_SLICES), spec, **labels))
        subjects.append(_labelled(read_csv(spec.folder / TEST_SUBJECTS), spec, **labels))
        runs.append(_labelled(pd.DataFrame([run_summary(spec, root)]), spec, **labels))
    return tuple(pd.concat(frames, ignore_index=True) for frames in (slices, subjects, runs))


def run_summary(spec: RunSpec, root: Path) -> dict:
    """Epochs, best epoch and its inner-validation loss, why it stopped, and time (upstream's "training
    time" = the epochs up to the best)."""
    state = RunState.load_or_new(spec.folder, spec.settings())
    history = read_history(spec.folder)
    to_best = history.loc[history["epoch"] <= state.best_epoch, "epoch_seconds"].sum()
    # The best epoch's own loss: with training.selection subject_dice it need not be the lowest one.
    best_loss = history.loc[history["epoch"] == state.best_epoch, "val_loss"]
    return {"epochs": state.epochs_done, "best_epoch": state.best_epoch,
            "best_val_loss": float(best_loss.iloc[0]) if len(best_loss) else state.best_loss,
            "stopped": state.stopped, "train_hours": float(history["epoch_seconds"].sum()) / 3600,
            "hours_to_best": float(to_best) / 3600,
            "model_file": (spec.folder / BEST_MODEL).relative_to(root).as_posix()}


def evaluation_scores(slices: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """Long frame (evaluation, model, plane, fold, dice, recall, precision) of the three evaluations."""
    keys = ["model", "plane", "fold"]
    upstream = slices[keys + ["dice_upstream", "recall_upstream", "precision_upstream"]].rename(
        columns=lambda c: c.replace("_upstream", ""))
    lesion = slices.loc[slices["kind"] == "lesion", keys + ["dice", "recall", "precision"]]
    three_d = subjects[keys + ["dice", "recall", "precision"]]
    parts = [frame.assign(evaluation=name) for name, frame in zip(EVALUATIONS, (upstream, lesion, three_d))]
    return pd.concat(parts, ignore_index=True)


def plane_fold_tables(slices: pd.DataFrame, subjects: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """``{(model, plane): folds results table}`` (results.folds_results_table per model and plane)."""
    scores = evaluation_scores(slices, subjects)
    tables = {}
    for (model, plane), group in scores.groupby(["model", "plane"], sort=False):
        tables[(model, plane)] = folds_results_table(group[["evaluation", "fold", "dice", "recall", "precision"]])
    return tables


def best_folds(tables: dict[tuple[str, str], pd.DataFrame], runs: pd.DataFrame,
               evaluation: str = "subject_3d") -> pd.DataFrame:
    """Per (model, plane): the fold with the best average score in ``evaluation`` and its model file.
    The choice looks at cross-validation test folds only, never at the 20 % hold-out."""
    rows = []
    for (model, plane), table in tables.items():
        best = table[(table["evaluation"] == evaluation) & table["best_fold"]]
        if best.empty:
            continue
        fold = int(best["fold"].iloc[0])
        run = runs[(runs["model"] == model) & (runs["plane"] == plane) & (runs["fold"] == fold)].iloc[0]
        rows.append({"model": model, "plane": plane, "fold": fold, "selected_on": evaluation,
                     "average_score": float(best["average_score"].iloc[0]), "model_file": run["model_file"]})
    return pd.DataFrame(rows, columns=["model", "plane", "fold", "selected_on", "average_score", "model_file"])

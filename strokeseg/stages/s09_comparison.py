"""Stage 09: the comparison models and the loss comparison, under stage 08's protocol.

Every comparison model is trained and evaluated by the same code as the stage-08 model (same
stores, normalisation, batches, folds, inner validation, epochs budget, early stopping and
evaluation), with its own published loss and optimiser (``comparison.recipe=published``,
strokeseg.train.recipes) or RAX-Net's (``comparison.recipe=raxnet``). The loss comparison trains the
stage-08 model with each loss in ``comparison.losses`` on ``comparison.loss_planes`` ×
``comparison.loss_folds`` (upstream: axial, fold 3, 150 epochs).

Outputs under ``09_comparison/``:
- ``runs/<model>/<plane>/fold_<k>/`` and ``losses/<loss>/<model>/<plane>/fold_<k>/``: the runs
  (kept across invocations, so a killed stage resumes), each with its test-fold evaluations;
- ``folds_results.csv``: per model and plane, stage 08's fold table (the reference model included);
  a 3-D model (``comparison.models`` may name ``unet3d`` or ``attention_unet3d``) has one plane,
  ``volume``, and only the ``subject_3d`` evaluation (it has no slices);
- ``best_folds.csv``: per comparison model and plane, the fold with the best cross-validation
  subject-3-D average score and its model file (stage 10's ``--volume-model`` reads it);
- ``model_comparison.csv``: per plane and model, mean ± std and median of the per-subject 3-D
  metrics on the cross-validation test folds;
- ``wilcoxon.csv``: per plane and model, the paired Wilcoxon signed-rank test of per-subject 3-D
  Dice against the stage-08 model;
- ``loss_comparison.csv`` / ``loss_wilcoxon.csv``: the same per loss (reference: upstream's
  "FocalTversky" sum, ``tversky_plus_focal``, when it is among the losses);
- ``test_subjects_3d.csv``, ``runs.csv``: every per-subject row and run summary of both comparisons;
- ``raincloud_dice_<plane>.png`` per plane, ``loss_raincloud_<plane>.png`` per loss plane.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import pandas as pd

from strokeseg.config import Config, apply_overrides
from strokeseg.contracts import (
    BEST_FOLDS_CSV,
    COMPARISON,
    LOSS_COMPARISON_CSV,
    MODEL_COMPARISON_CSV,
    RUNS_CSV,
    RUNS_DIR,
    TEST_SLICES_CSV,
    TEST_SUBJECTS_3D_CSV,
    TRAINING,
)
from strokeseg.stages import s08_training as training_stage
from strokeseg.workdir import StageWriter, is_synthetic_run, read_csv, require_stage, stage_config, stage_dir, write_csv

log = logging.getLogger(__name__)
STAGE = COMPARISON
LOSS_RUNS = "losses"
SUMMARY_METRICS = ["dice", "precision", "recall", "lesionwise_f1", "hd95_mm", "volume_difference_ml",
                   "lesion_count_difference"]
REFERENCE_LOSS = "tversky_plus_focal"


def starting_config(workdir: Path, overrides: Iterable[str] = ()) -> Config:
    """The config stage 08 recorded, plus overrides."""
    return apply_overrides(stage_config(workdir, TRAINING), overrides).validate()


def run(workdir: Path, config: Config, progress: bool = True, fresh: bool = False) -> Path:
    from strokeseg.evaluate.tables import paired_wilcoxon, summary_table
    from strokeseg.train import experiments
    from strokeseg.train.distribute import training_environment
    from strokeseg.train.parallel_runs import train_runs
    from strokeseg.train.recipes import model_training

    log.info("09 comparison: %s", training_environment(config.training.precision, config.training.require_gpu))
    reference_dir = require_stage(workdir, TRAINING)
    inputs = experiments.Inputs.of(workdir)
    comparison, root = config.comparison, stage_dir(workdir, STAGE)
    reference = config.training.model

    model_specs = []
    for model in comparison.models:
        training = model_training(config, model, comparison.recipe, comparison.max_epochs)
        model_specs += experiments.run_specs(config, inputs, training, comparison.planes, comparison.folds,
                                             root / RUNS_DIR)
    loss_specs = {}
    for loss in comparison.losses:
        training = replace(config.training, loss=loss, loss_options={}, max_epochs=comparison.loss_max_epochs)
        loss_specs[loss] = experiments.run_specs(config, inputs, training, comparison.loss_planes,
                                                 comparison.loss_folds, root / LOSS_RUNS / loss)
    chief = train_runs(model_specs + [s for specs in loss_specs.values() for s in specs], inputs, fresh, progress,
                       config.training.parallel_runs)
    if not chief:
        return root

    # Models: the stage-08 model's own results are the reference.
    tables, subjects, runs = [], [read_csv(reference_dir / TEST_SUBJECTS_3D_CSV)], []
    if model_specs:
        slices, model_subjects, model_runs = experiments.collect(model_specs, root)
        best = experiments.best_folds(experiments.plane_fold_tables(slices, model_subjects), model_runs)
        subjects.append(model_subjects)
        runs.append(model_runs.assign(comparison="model"))
        reference_slices = read_csv(reference_dir / TEST_SLICES_CSV)
        tables = _fold_tables(pd.concat([reference_slices, slices], ignore_index=True),
                              pd.concat(subjects, ignore_index=True))
    subjects = pd.concat(subjects, ignore_index=True)

    # Losses.
    loss_tables, loss_subjects = [], []
    for loss, specs in loss_specs.items():
        slices, per_subject, loss_runs = experiments.collect(specs, root, loss=loss)
        loss_subjects.append(per_subject)
        runs.append(loss_runs.assign(comparison="loss"))
        loss_tables += [t.assign(loss=loss) for t in _fold_tables(slices, per_subject)]

    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir), kept=(RUNS_DIR, LOSS_RUNS)) as out:
        if model_specs:
            write_csv(pd.concat(tables, ignore_index=True), out.path / "folds_results.csv")
            write_csv(best, out.path / BEST_FOLDS_CSV)
            write_csv(summary_table(subjects, ["plane", "model"], _present(subjects)), out.path / MODEL_COMPARISON_CSV)
            write_csv(paired_wilcoxon(subjects, reference, "dice"), out.path / "wilcoxon.csv")
            write_csv(subjects, out.path / TEST_SUBJECTS_3D_CSV)
            _model_figures(subjects, reference, comparison.models, out)
        if loss_specs:
            losses = pd.concat(loss_subjects, ignore_index=True)
            write_csv(_first(pd.concat(loss_tables, ignore_index=True), "loss"), out.path / LOSS_COMPARISON_CSV)
            write_csv(losses, out.path / "loss_test_subjects_3d.csv")
            if REFERENCE_LOSS in loss_specs:
                write_csv(paired_wilcoxon(losses, REFERENCE_LOSS, "dice", model_column="loss"),
                          out.path / "loss_wilcoxon.csv")
            _loss_figures(losses, list(loss_specs), out)
        if runs:
            write_csv(pd.concat(runs, ignore_index=True), out.path / RUNS_CSV)
        out.extra["reference_model"] = reference
        out.extra["recipe"] = comparison.recipe
    return root


def _fold_tables(slices: pd.DataFrame, subjects: pd.DataFrame) -> list[pd.DataFrame]:
    """Stage 08's fold tables, one per (model, plane), labelled."""
    from strokeseg.train import experiments  # imports TensorFlow: not at module import (the CLI)

    return [_first(_first(table, "plane", plane), "model", model)
            for (model, plane), table in experiments.plane_fold_tables(slices, subjects).items()]


def _first(frame: pd.DataFrame, column: str, value=None) -> pd.DataFrame:
    """``frame`` with ``column`` moved (or inserted with ``value``) to the front."""
    frame = frame.copy()
    values = frame.pop(column) if value is None else value
    frame.insert(0, column, values)
    return frame


def _present(frame: pd.DataFrame) -> list[str]:
    return [m for m in SUMMARY_METRICS if m in frame.columns]


def _model_figures(subjects: pd.DataFrame, reference: str, models, out: StageWriter) -> None:
    from strokeseg.report.figures import comparison_raincloud

    order = [reference] + [m for m in models if m != reference]
    for plane, group in subjects.groupby("plane", sort=False):
        present = [m for m in order if m in set(group["model"])]
        comparison_raincloud(group, out.path / f"raincloud_dice_{plane}.png", out.synthetic, "dice", present,
                             title=f"{plane}: per-subject 3-D Dice by model (cross-validation test folds)")


def _loss_figures(losses: pd.DataFrame, names: list[str], out: StageWriter) -> None:
    from strokeseg.report.figures import comparison_raincloud

    for plane, group in losses.groupby("plane", sort=False):
        comparison_raincloud(group, out.path / f"loss_raincloud_{plane}.png", out.synthetic, "dice", names,
                             title=f"{plane}: per-subject 3-D Dice by training loss", model_column="loss")


# Command line (used by strokeseg.cli): the same --fresh flag as stage 08.
add_arguments, run_options = training_stage.add_arguments, training_stage.run_options

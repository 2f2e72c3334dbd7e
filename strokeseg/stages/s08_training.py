"""Stage 08: train the configured model (RAX-Net by default) on every selected (plane, test fold),
evaluate each on its test fold, and tabulate (see strokeseg.train.loop, strokeseg.train.experiments).

Outputs under ``08_training/``:
- ``runs/<model>/<plane>/fold_<k>/``: the run (state, checkpoint, history.csv, best.keras) and its
  ``test_slices.csv`` / ``test_subjects.csv``; kept across invocations so a killed stage resumes;
- ``<plane>_folds_results.csv``: per evaluation (slice_upstream, lesion_slices, subject_3d) and
  fold, mean ± std of Dice, recall, precision, the Average Score, an All row and the best fold;
- ``test_slices.csv``, ``test_subjects_3d.csv``: every evaluated slice and subject, all runs; where
  stage 01 located the lesions, each subject's ``location_class`` and ``hemisphere`` (its whole mask),
  and ``by_location.csv``: per plane, location class and hemisphere, n and mean/std/median of the 3-D
  Dice, recall and precision (:mod:`strokeseg.evaluate.location_tables`);
- ``runs.csv``: epochs, best epoch, stopping reason and hours per run;
- ``best_folds.csv``: per plane, the fold whose model stage 10 uses by default (best 3-D average
  score on its cross-validation test fold) and its model file;
- ``test_dice_3d.png``: raincloud of per-subject 3-D Dice per plane.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterable

from strokeseg.config import Config, apply_overrides
from strokeseg.contracts import (
    BEST_FOLDS_CSV,
    BY_LOCATION_CSV,
    PREPARATION,
    RUNS_CSV,
    RUNS_DIR,
    TEST_SLICES_CSV,
    TEST_SUBJECTS_3D_CSV,
    TRAINING,
    plane_folds_results_csv,
)
from strokeseg.evaluate import location_tables
from strokeseg.workdir import StageWriter, is_synthetic_run, stage_config, stage_dir, write_csv

log = logging.getLogger(__name__)
STAGE = TRAINING


def starting_config(workdir: Path, overrides: Iterable[str] = ()) -> Config:
    """The config stage 06 recorded (stage 07, the model table, is optional), plus overrides."""
    return apply_overrides(stage_config(workdir, PREPARATION), overrides).validate()


def run(workdir: Path, config: Config, progress: bool = True, fresh: bool = False) -> Path:
    from strokeseg.train import experiments
    from strokeseg.train.distribute import training_environment
    from strokeseg.train.parallel_runs import train_runs

    training = config.training
    log.info("08 training: %s", training_environment(training.precision, training.require_gpu))
    inputs = experiments.Inputs.of(workdir)
    root = stage_dir(workdir, STAGE)
    specs = experiments.run_specs(config, inputs, training, training.planes, training.folds, root / RUNS_DIR)
    chief = train_runs(specs, inputs, fresh, progress, training.parallel_runs)
    if not chief:  # a non-chief worker of a multi-worker run: the chief publishes
        return root
    slices, subjects, runs = experiments.collect(specs, root)
    tables = experiments.plane_fold_tables(slices, subjects)
    located = location_tables.subject_locations(workdir)
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir), kept=(RUNS_DIR,)) as out:
        for (_, plane), table in tables.items():
            write_csv(table, out.path / plane_folds_results_csv(plane))
        write_csv(slices, out.path / TEST_SLICES_CSV)
        if located is not None:
            subjects = location_tables.with_locations(subjects, located)
            write_csv(location_tables.by_location(subjects, "plane", list(dict.fromkeys(subjects["plane"])),
                                                  ("dice", "recall", "precision")), out.path / BY_LOCATION_CSV)
        write_csv(subjects, out.path / TEST_SUBJECTS_3D_CSV)
        write_csv(runs, out.path / RUNS_CSV)
        write_csv(experiments.best_folds(tables, runs), out.path / BEST_FOLDS_CSV)
        _figure(subjects, out.path / "test_dice_3d.png", out.synthetic, training.model)
        out.extra["model"] = training.model
        out.extra["runs"] = [str(s.folder.relative_to(root)) for s in specs]
    return root


def _figure(subjects, path: Path, synthetic: bool, model: str) -> None:
    from strokeseg.report.figures import raincloud_figure

    raincloud_figure(subjects, group="plane", value="dice", path=path, synthetic=synthetic,
                     title=f"{model}: per-subject 3-D Dice on the cross-validation test folds",
                     ylabel="Dice (single plane, 3-D)")


# Command line (used by strokeseg.cli) ----------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fresh", action="store_true",
                        help="discard this stage's existing runs and train from scratch (default: resume "
                             "unfinished runs, reuse finished ones)")


def run_options(args: argparse.Namespace) -> dict:
    return {"fresh": args.fresh}

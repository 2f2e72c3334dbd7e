"""Stage 03: the 80 % subjects become per-plane slice stores (see strokeseg.data.stores), and when
the config trains a 3-D model (``training.model`` or one of ``comparison.models``) also one volume
store, ``volume/`` (strokeseg.data.volume_stores), on the same grid with the same normalisation.

The 20 % hold-out is not converted: ``holdout.csv`` lists its subjects and files for stage 10.
"""
from __future__ import annotations

from pathlib import Path

from strokeseg.config import Config
from strokeseg.contracts import (
    COHORT_CSV,
    CONVERT,
    DATASET,
    HOLDOUT_CSV,
    HOLDOUT_SUBJECTS_CSV,
    SPLITTING,
    TRAIN_SUBJECTS_CSV,
    VOLUME_STORE_DIR,
)
from strokeseg.data.stores import write_stores
from strokeseg.data.volume_stores import write_cohort_store
from strokeseg.models import selected_volume_models
from strokeseg.workdir import (
    StageWriter,
    grid_plan,
    is_synthetic_run,
    manifest,
    read_csv,
    require_stage,
    stage_dir,
    write_csv,
)

STAGE = CONVERT


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    plan = grid_plan(workdir)
    files = read_csv(require_stage(workdir, DATASET) / COHORT_CSV, required=("subject_name", *plan.channels, "mask"),
                     min_rows=1)
    split = require_stage(workdir, SPLITTING)
    train = _with_files(read_csv(split / TRAIN_SUBJECTS_CSV, required=("subject_name",), min_rows=1), files)
    holdout = _with_files(read_csv(split / HOLDOUT_SUBJECTS_CSV, required=("subject_name",)), files)
    allow_empty = manifest(workdir, DATASET).get("allow_empty_masks", False)
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir)) as out:
        counts = write_stores(out.path, train.sort_values("subject_name"), plan, config.convert,
                              config.dataset.binarize_masks, config.workers, progress, allow_empty)
        volume_models = selected_volume_models(config)
        if volume_models:
            write_cohort_store(out.path / VOLUME_STORE_DIR, train.sort_values("subject_name"), plan, config.convert,
                               config.dataset.binarize_masks, allow_empty, config.seed, config.workers, progress)
        write_csv(holdout.sort_values("subject_name"), out.path / HOLDOUT_CSV)
        out.extra["rows_per_plane"] = counts
        out.extra["volume_store_for"] = volume_models
    return stage_dir(workdir, STAGE)


def _with_files(subjects, files):
    """Stage 02's subject rows with their cohort.csv columns (files, geometry); the group once."""
    own = [c for c in subjects.columns if c == "subject_name" or c not in files.columns]
    return subjects[own].merge(files, on="subject_name", validate="one_to_one")

"""Stage 03: the 80 % subjects become per-plane slice stores (see strokeseg.data.stores).

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
)
from strokeseg.data.cohort import SubjectFiles
from strokeseg.data.stores import write_stores
from strokeseg.workdir import StageWriter, is_synthetic_run, read_csv, require_stage, stage_dir, write_csv

STAGE = CONVERT


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    files = read_csv(require_stage(workdir, DATASET) / COHORT_CSV)
    split = require_stage(workdir, SPLITTING)
    train = read_csv(split / TRAIN_SUBJECTS_CSV).merge(files, on="subject_name", validate="one_to_one")
    holdout = read_csv(split / HOLDOUT_SUBJECTS_CSV).merge(files, on="subject_name", validate="one_to_one")
    subjects = [SubjectFiles(r.subject_name, r.site, Path(r.t1w), Path(r.mask))
                for r in train.sort_values("subject_name").itertuples()]
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir)) as out:
        counts = write_stores(out.path, subjects, config.convert, config.dataset.binarize_masks,
                              config.workers, progress)
        write_csv(holdout.sort_values("subject_name"), out.path / HOLDOUT_CSV)
        out.extra["rows_per_plane"] = counts
    return stage_dir(workdir, STAGE)

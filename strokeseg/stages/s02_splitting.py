"""Stage 02: the 80/20 subject split, stratified on the six 3-D volume bins.

Writes ``subjects_80.csv`` and ``subjects_20.csv`` (subject_name, sum_voxel, volume_bin), the
per-plane lesion-slice tables restricted to the 80 % (``lesion_information_<plane>_80.csv``),
and a raincloud of lesion volume for all / 80 % / 20 %.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from strokeseg.config import Config
from strokeseg.contracts import (
    DATASET,
    HOLDOUT_SUBJECTS_CSV,
    SPLITTING,
    SUBJECTS_3D_CSV,
    TRAIN_SUBJECTS_CSV,
    plane_lesions_80_csv,
    plane_lesions_csv,
)
from strokeseg.protocol.splits import holdout_split
from strokeseg.report import figures
from strokeseg.workdir import (
    StageWriter,
    is_synthetic_run,
    read_csv,
    require_columns,
    require_stage,
    stage_dir,
    study_planes,
    write_csv,
)

STAGE = SPLITTING
COLUMNS = ["subject_name", "sum_voxel", "volume_bin"]
# what stages 04 and 05 read of the lesion-slice tables this stage passes on
SLICE_COLUMNS = ("subject_name", "slice", "sum_voxel", "slice_bin")


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    dataset = require_stage(workdir, DATASET)
    subjects = read_csv(dataset / SUBJECTS_3D_CSV, required=COLUMNS, min_rows=1)
    columns = COLUMNS + (["group"] if "group" in subjects.columns else [])  # sessions of one patient stay together
    subjects = require_columns(subjects, dataset / SUBJECTS_3D_CSV, columns)[columns]
    planes = study_planes(workdir)
    slice_tables = {plane: read_csv(dataset / plane_lesions_csv(plane), required=SLICE_COLUMNS) for plane in planes}
    train, holdout = holdout_split(subjects, config.split.holdout_fraction, config.seed)
    synthetic = is_synthetic_run(workdir)
    with StageWriter(workdir, STAGE, config, synthetic=synthetic) as out:
        write_csv(train[columns], out.path / TRAIN_SUBJECTS_CSV)
        write_csv(holdout[columns], out.path / HOLDOUT_SUBJECTS_CSV)
        keep = set(train["subject_name"])
        for plane, slices in slice_tables.items():
            write_csv(slices[slices["subject_name"].isin(keep)], out.path / plane_lesions_80_csv(plane))
        groups = [("all", subjects), ("80 %", train), ("20 %", holdout)]
        long = pd.concat([frame.assign(set=name)[["set", "sum_voxel"]] for name, frame in groups],
                         ignore_index=True)
        long = long[long["sum_voxel"] > 0]   # a log axis: subjects without lesion voxels are not drawn
        figures.raincloud_figure(long, "set", "sum_voxel", "3-D lesion volume: all subjects, 80 % and 20 % sets",
                                 "lesion voxels", out.path / "lesion_volume_split.png", synthetic,
                                 order=[g for g, _ in groups], log_y=True)
    return stage_dir(workdir, STAGE)

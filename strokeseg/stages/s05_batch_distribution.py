"""Stage 05: distribution-matched batch plans per plane, fold and fold part.

Every fold is split once into a training part and an inner-validation part (volume-bin
stratified, strokeseg.protocol.splits): when fold k is the test fold, models fit on the other folds'
training parts and are selected on their inner-validation parts, and fold k is only evaluated
(upstream selected on the test fold, §14.6). Each part gets batches of ``lesion_per_batch`` lesion
slices allocated to size bins by largest remainder (every non-empty bin at least one slot) plus
normal slices (strokeseg.protocol.batches). Writes ``<plane>/fold_<k>/{train,inner_val}_batches.csv``,
``inner_validation.csv`` (fold, subject_name) and ``bin_usage.csv`` (per plane, fold and part:
how many slices of each bin are available, used, repeated and unused).

With ``batches.kind = "foreground_weighted"`` (the LGG U-Net's sampler, strokeseg.protocol.weighted_sampling)
or ``"every_slice"`` (the CT projects' loaders: uniform weights, each slice once per epoch) each part's plan
is instead its whole pool, every slice once, with a ``weight`` column (training draws each epoch's slots
from it); ``bin_usage.csv`` then gives per bin the pool slices, the padding rows of
the last batch, the bin's share of the weight and the slots per batch it is expected to fill.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from strokeseg.config import POOL_BATCH_KINDS, Config, derive_seed
from strokeseg.contracts import (
    BATCHES,
    CROSS_VALIDATION,
    FOLDS_CSV,
    INNER_VALIDATION_CSV,
    SPLITTING,
    TRAIN_SUBJECTS_CSV,
    batches_csv,
    lesion_slices_csv,
    normal_slices_csv,
)
from strokeseg.errors import ConfigError
from strokeseg.protocol import bins
from strokeseg.protocol.batches import compose_batches
from strokeseg.protocol.splits import PARTS, inner_validation_subjects
from strokeseg.protocol.weighted_sampling import pool_plan
from strokeseg.workdir import (
    StageWriter,
    is_synthetic_run,
    read_csv,
    require_stage,
    stage_config,
    stage_dir,
    study_planes,
    write_csv,
)

STAGE = BATCHES
USAGE_CSV = "bin_usage.csv"


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    cv = require_stage(workdir, CROSS_VALIDATION)
    pooled = config.batches.kind in POOL_BATCH_KINDS
    # every_slice: equal weights; an epoch then visits each slice once (strokeseg.train.input_pipeline)
    floor = config.batches.foreground_floor if config.batches.kind == "foreground_weighted" else None
    chosen_for = stage_config(workdir, CROSS_VALIDATION).batches.kind
    # a pool kind needs every eligible normal slice, distribution plans a 1:1 draw (both pool kinds: the same)
    if (chosen_for in POOL_BATCH_KINDS) != pooled:
        raise ConfigError(f"stage 04 chose its normal slices for batches.kind={chosen_for!r}; rerun "
                          f"cross-validation with --set batches.kind={config.batches.kind} first")
    folds = read_csv(cv / FOLDS_CSV)
    n_folds = int(folds["fold"].max())
    # Subjects without lesion voxels (lesion-free cohorts such as kaggle_3m, or lesions lost to a grid
    # plan's resampling) always train: an inner-validation part needs lesion slices to make batches.
    # On ATLAS every subject has a lesion, so the draw is the one made over every subject.
    trained = read_csv(require_stage(workdir, SPLITTING) / TRAIN_SUBJECTS_CSV)
    lesioned = set(trained.loc[trained["sum_voxel"] > 0, "subject_name"])
    inner = inner_validation_subjects(folds[folds["subject_name"].isin(lesioned)],
                                      config.batches.inner_validation_fraction, config.seed)
    held = set(inner["subject_name"])
    parts = {(int(fold), part): set(members["subject_name"]) & held if part == "inner_val"
             else set(members["subject_name"]) - held
             for fold, members in folds.groupby("fold") for part in PARTS}
    normal_per_batch = config.batches.batch_size - config.batches.lesion_per_batch
    usage = []
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir)) as out:
        write_csv(inner, out.path / INNER_VALIDATION_CSV)
        for plane in study_planes(workdir):
            edges = config.bins.slice_edges(plane)
            labels = dict(enumerate(bins.bin_labels(edges)))
            for fold in range(1, n_folds + 1):
                (out.path / plane / f"fold_{fold}").mkdir(parents=True)
                lesions = read_csv(cv / lesion_slices_csv(plane, fold))
                normals = read_csv(cv / normal_slices_csv(plane, fold))
                for part in PARTS:
                    chosen = parts[(fold, part)]
                    columns = ["subject_name", "slice", "sum_voxel", "slice_bin"]
                    part_lesions = lesions[lesions["subject_name"].isin(chosen)][columns]
                    part_normals = normals[normals["subject_name"].isin(chosen)][["subject_name", "slice"]]
                    if pooled:
                        plan, used = pool_plan(part_lesions, part_normals, len(edges) - 1,
                                               config.batches.batch_size, floor)
                    else:
                        plan, used = compose_batches(part_lesions, part_normals, len(edges) - 1,
                                                     config.batches.lesion_per_batch, normal_per_batch,
                                                     derive_seed(config.seed, "batches", plane, fold, part))
                    write_csv(plan, out.path / batches_csv(plane, fold, part))
                    used.insert(0, "part", part)
                    used.insert(0, "fold", fold)
                    used.insert(0, "plane", plane)
                    used.insert(5, "label", used["bin"].map(labels).fillna("normal"))
                    usage.append(used)
        write_csv(pd.concat(usage, ignore_index=True), out.path / USAGE_CSV)
    return stage_dir(workdir, STAGE)

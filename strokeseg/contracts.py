"""The numbered stages and the files they hand to each other, each named once.

:data:`STAGES` is the registry the command line, the workdir and the demo share: folder, command,
module under :mod:`strokeseg.stages` and a one-line summary. Below it, per stage, the names of the
outputs that later stages, ``strokeseg predict``, ``strokeseg evaluate`` or the demo read; a reader
imports the name from here instead of retyping it. Files only the writing stage itself uses stay in
that stage's module.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    folder: str           # output folder under the workdir, and the folder of its run.py
    command: str          # `strokeseg <command>`
    module: str           # strokeseg.stages.<module>
    summary: str

    @property
    def run_script(self) -> str:
        return f"{self.folder}/run.py"

    @property
    def title(self) -> str:
        """``NN: summary``, as the command line lists the stages."""
        return f"{self.folder[:2]}: {self.summary}"


STAGES = (
    Stage("01_dataset", "dataset", "s01_dataset", "cohort (ATLAS v2.0 or synthetic) and lesion statistics"),
    Stage("02_splitting", "splitting", "s02_splitting", "stratified 80/20 subject split"),
    Stage("03_convert", "convert", "s03_convert", "per-plane slice stores of the 80 % subjects"),
    Stage("04_cross_validation", "cross-validation", "s04_cross_validation",
          "subject-level folds shared by all planes, normal slices, balance tests"),
    Stage("05_batch_distribution", "batches", "s05_batch_distribution",
          "distribution-matched batch plans and inner validation subjects"),
    Stage("06_preparation", "prepare", "s06_preparation", "memory-mapped arrays (n_batches, batch, H, W, C)"),
    Stage("07_models", "models", "s07_models",
          "the model zoo table (parameters, GFLOPs, measured speed per slice or 3-D patch)"),
    Stage("08_training", "training", "s08_training",
          "train the configured model per (plane, fold) with resume; test-fold tables"),
    Stage("09_comparison", "comparison", "s09_comparison",
          "comparison models and loss comparison under the same protocol; Wilcoxon tests, figures"),
    Stage("10_fusion", "fusion", "s10_fusion",
          "tri-planar inference and fusion of the held-out volumes; 3-D evaluation, tables, figures"),
)
FOLDERS = tuple(stage.folder for stage in STAGES)
BY_COMMAND = {stage.command: stage for stage in STAGES}
(DATASET, SPLITTING, CONVERT, CROSS_VALIDATION, BATCHES, PREPARATION, MODELS, TRAINING, COMPARISON,
 FUSION) = FOLDERS

# Every stage folder
MANIFEST_JSON = "manifest.json"     # what the stage wrote; written last, so its presence means "finished"
CONFIG_JSON = "config.json"         # the config the stage ran with; the next stage starts from it

# 01_dataset
COHORT_CSV = "cohort.csv"                          # subject, group, site, channel and mask files, geometry
VOLUMES_DIR = "volumes"                            # subjects written as NIfTI by stage 01 (slice folders, ...)
SUBJECTS_3D_CSV = "lesion_information_3d.csv"      # per-subject lesion statistics and volume bin
# Lesion locations (cohorts in MNI space only; strokeseg.data.lesion_locations)
LESION_LOCATIONS_CSV = "lesion_locations.csv"      # per lesion: hemisphere, class, regions, centroid
SUBJECT_LOCATIONS_CSV = "subject_locations.csv"    # per subject: the whole mask's hemisphere and class
LESION_LOAD_CSV = "lesion_load_by_region.csv"      # per subject x region: lesion voxels and mL
LESION_FREQUENCY_NII = "lesion_frequency.nii.gz"   # share of subjects with lesion at each voxel
ATLAS_CACHE_DIR = "atlas_cache"                    # workdir/atlas_cache: the region atlas per grid


def plane_lesions_csv(plane: str) -> str:
    """01_dataset: per-slice lesion statistics of one plane."""
    return f"lesion_information_{plane}.csv"


# 02_splitting
TRAIN_SUBJECTS_CSV, HOLDOUT_SUBJECTS_CSV = "subjects_80.csv", "subjects_20.csv"


def plane_lesions_80_csv(plane: str) -> str:
    """02_splitting: the 80 % subjects' rows of :func:`plane_lesions_csv`."""
    return f"lesion_information_{plane}_80.csv"


# 03_convert (slice stores in <plane>/, see strokeseg.data.stores)
HOLDOUT_CSV = "holdout.csv"                        # hold-out subjects with their T1 and mask paths
VOLUME_STORE_DIR = "volume"                        # whole volumes for 3-D models (strokeseg.data.volume_stores)

# 04_cross_validation
FOLDS_CSV = "folds.csv"                            # subject_name, fold


def lesion_slices_csv(plane: str, fold: int) -> str:
    return f"{plane}/fold_{fold}_lesion.csv"


def normal_slices_csv(plane: str, fold: int) -> str:
    return f"{plane}/fold_{fold}_normal.csv"


# 05_batch_distribution
INNER_VALIDATION_CSV = "inner_validation.csv"


def batches_csv(plane: str, fold: int, part: str) -> str:
    return f"{plane}/fold_{fold}/{part}_batches.csv"


# 07_models
MODELS_TABLE_CSV = "models.csv"

# 08_training and 09_comparison (both train runs and tabulate them the same way)
RUNS_DIR = "runs"                                  # runs/<model>/<plane>/fold_<k>/
RUNS_CSV = "runs.csv"                              # one row per run, with its model_file
BEST_FOLDS_CSV = "best_folds.csv"                  # 08: per plane, the fold stage 10 uses
TEST_SLICES_CSV = "test_slices.csv"
TEST_SUBJECTS_3D_CSV = "test_subjects_3d.csv"


def plane_folds_results_csv(plane: str) -> str:
    """08_training: per evaluation and fold, the plane's cross-validation scores."""
    return f"{plane}_folds_results.csv"


MODEL_COMPARISON_CSV, LOSS_COMPARISON_CSV = "model_comparison.csv", "loss_comparison.csv"   # 09

# 10_fusion (and `strokeseg evaluate`, which writes the same three tables)
SUBJECTS_CSV, SUMMARY_CSV, BY_VOLUME_BIN_CSV = "subjects.csv", "summary.csv", "by_volume_bin.csv"
FUSION_GAIN_CSV = "fusion_gain.csv"
BY_LOCATION_CSV = "by_location.csv"                # per mask x location class / hemisphere: metrics
HOLDOUT_LESIONS_CSV = "holdout_lesions.csv"        # stage 01's hold-out lesion rows with `detected`
DETECTION_BY_LOCATION_CSV = "detection_by_location.csv"   # lesion-wise detection per location group
MASKS_DIR, MODELS_DIR = "masks", "models"


def fused_mask_file(subject: str) -> str:
    """10_fusion: ``masks/<subject>_fused_mask.nii.gz``."""
    return f"{subject}_fused_mask.nii.gz"

# CSV columns that measure wall-clock time or throughput (07's model table, 08/09's run tables and training
# histories, predict's table): they differ from run to run. Every other value of every CSV and every figure is
# reproducible: two runs of the same config write them byte for byte.
MEASURED_COLUMNS = ("forward_ms_per_slice", "train_step_ms_per_slice", "forward_ms_per_patch",
                    "train_step_ms_per_patch", "forward_gflops_per_second", "matmul_gflops_per_second",
                    "matmul_fraction", "train_hours", "hours_to_best", "train_seconds", "epoch_seconds", "seconds")

"""One typed configuration for the whole protocol, with named profiles and dotted overrides.

A stage builds its config once (profile + overrides), records it beside its outputs as
``config.json``, and every later stage starts from the recorded one, so dataset and profile are
given once. Overrides are ``section.field=value`` strings; the value is parsed as JSON when it can
be (numbers, lists, true/false/null) and checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import zlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from strokeseg.data.scanner_sites import N_SITES
from strokeseg.errors import ConfigError
from strokeseg.models import MODULES

PLANES = ("axial", "sagittal", "coronal")
# The "plane" of a 3-D model (strokeseg.models.VOLUME_MODELS): its runs, tables and model files are
# named like a plane's, but it reads patches of the whole volume.
VOLUME = "volume"

# Upstream bin edges (docs/upstream-raxnet.md §1.4, §2.1, §4.1). One convention for every
# stage: right-closed, lo < v <= hi (the splitting and k-fold convention upstream); see bins.py.
VOLUME_BIN_EDGES = (0, 5_000, 30_000, 60_000, 100_000, 200_000, math.inf)
AXIAL_CORONAL_SLICE_EDGES = (0, 200, 500, 1_000, 2_000, 3_000, math.inf)
SAGITTAL_SLICE_EDGES = (0, 500, 1_000, 2_000, 3_000, 5_000, math.inf)


# The synthetic generators' limits (strokeseg.data.synthetic and synthetic_multimodal read them from here):
# (most subjects, largest downsampling); subject numbers have three digits per site as in ATLAS, four as
# in ISLES'22.
SYNTHETIC_LIMITS = {"synthetic": (N_SITES * 999, 32), "synthetic_multimodal": (9_999, 8)}


# Every field is explained in FIELD_HELP below (shown by each stage's --help).
# Where subjects come from: the two synthetic flavours, or a reader of strokeseg.data.readers.
SYNTHETIC_SOURCES = ("synthetic", "synthetic_multimodal")
READER_SOURCES = ("atlas", "isles22", "nnunet", "png_slices", "kaggle_3m")


@dataclass(frozen=True)
class DatasetConfig:
    source: str = "synthetic"
    atlas_dir: str | None = None
    data_dir: str | None = None
    n_subjects: int = 655
    downsample: int = 1
    binarize_masks: bool = False
    synthetic_seed: int = 2022
    channels: tuple[str, ...] = ()
    label: int = 1
    resample_flair: bool = False
    spacing: tuple[float, ...] = ()
    grid_plan: str = "auto"
    target_spacing: tuple[float, ...] = ()
    lesion_locations: bool = True

    @property
    def folder(self) -> str | None:
        """The dataset's root folder (``atlas_dir`` is the older name of ``data_dir`` for ATLAS)."""
        return self.data_dir or self.atlas_dir


@dataclass(frozen=True)
class BinsConfig:
    volume_edges: tuple[float, ...] = VOLUME_BIN_EDGES
    axial_edges: tuple[float, ...] = AXIAL_CORONAL_SLICE_EDGES
    sagittal_edges: tuple[float, ...] = SAGITTAL_SLICE_EDGES
    coronal_edges: tuple[float, ...] = AXIAL_CORONAL_SLICE_EDGES

    def slice_edges(self, plane: str) -> tuple[float, ...]:
        return getattr(self, f"{plane}_edges")


@dataclass(frozen=True)
class SplitConfig:
    holdout_fraction: float = 0.2


@dataclass(frozen=True)
class ConvertConfig:
    normalization: str = "volume_robust"
    robust_percentiles: tuple[float, float] = (0.5, 99.5)
    head_region: str = "robust"
    canvas_multiple: int = 16
    store_dtype: str = "uint8"
    ct_window: tuple[float, float] = (0.0, 80.0)
    mr_normalization: str = "zscore"
    clip_percentiles: tuple[float, float] = (10.0, 99.0)


@dataclass(frozen=True)
class CrossValidationConfig:
    n_folds: int = 5
    normal_ratio: float = 1.0
    min_brain_fraction: float = 0.05
    edge_slices: int = 0


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = 32
    lesion_per_batch: int = 16
    inner_validation_fraction: float = 0.15
    fixed_order: bool = False
    kind: str = "distribution"
    foreground_floor: float = 0.1


@dataclass(frozen=True)
class PrepareConfig:
    channels: tuple[int, ...] = (1,)
    planes: tuple[str, ...] = PLANES


@dataclass(frozen=True)
class TrainingConfig:
    """Stage 08 (and the defaults stage 09 starts from). Paper: docs/upstream-raxnet.md §8, §8.1, §14.14."""
    model: str = "raxnet"
    model_options: dict = field(default_factory=dict)
    loss: str = "tversky_plus_focal"
    loss_options: dict = field(default_factory=dict)
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.004
    momentum: float = 0.0
    clipnorm: float = 0.0
    schedule: str = "exponential"
    decay_steps: int = 100_000
    decay_rate: float = 0.9
    restart_epochs: int = 10
    min_learning_rate: float = 0.0
    plateau_factor: float = 1.0
    plateau_patience: int = 0
    max_epochs: int = 500
    patience: int = 50
    min_delta: float = 0.0
    steps_per_epoch: int = 0
    validation_steps: int = 0
    augment: bool = False
    flip_probability: float = 0.5
    max_rotation_degrees: float = 10.0
    max_scaling: float = 0.1
    # Intensity augmentation (strokeseg.train.intensity_augmentation): nnU-Net's set and defaults.
    intensity_augment: bool = False
    noise_probability: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_probability: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_probability: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_probability: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_probability: float = 0.3
    inverted_gamma_probability: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    precision: str = "auto"
    require_gpu: bool = False
    run_eagerly: bool = False
    batchnorm_momentum: float | None = None
    planes: tuple[str, ...] = PLANES
    folds: tuple[int, ...] = ()
    eval_batch_size: int = 32
    parallel_runs: int = 1
    # 3-D models only (strokeseg.train.volume_data): patches, batches and sliding-window inference.
    patch_size: tuple[int, ...] = ()
    patch_batch_size: int = 2
    patch_steps: int = 250
    patch_validation_steps: int = 50
    deep_supervision: bool = True
    window_step: float = 0.5
    # Model selection and run logs.
    selection: str = "val_loss"
    tensorboard: bool = True
    overlay_every: int = 10
    overlay_count: int = 4


@dataclass(frozen=True)
class PostprocessConfig:
    """Post-processing of stage 10's and predict's masks (their --min-lesion-voxels and
    --largest-component override it)."""
    rule: str = "none"
    min_lesion_voxels: int = 0

    def removal(self) -> tuple[int, bool]:
        """(smallest component kept, largest only) of this rule, as
        strokeseg.infer.postprocessing.postprocess takes them: "none" and "auto" (whose choice is made
        later, on cross-validation) remove nothing."""
        return (self.min_lesion_voxels if self.rule == "min_size" else 0), self.rule == "largest"


@dataclass(frozen=True)
class ComparisonConfig:
    """Stage 09: comparison models and the loss comparison (docs/upstream-raxnet.md §9, §10, §14.17–19)."""
    models: tuple[str, ...] = ("xnet", "clci", "dunet", "lcnn", "unet", "resunet", "attention_unet")
    recipe: str = "published"
    model_options: dict = field(default_factory=dict)
    planes: tuple[str, ...] = PLANES
    folds: tuple[int, ...] = ()
    max_epochs: int = 500
    losses: tuple[str, ...] = ("dice", "binary_focal", "tversky", "tversky_plus_focal", "focal_tversky")
    loss_planes: tuple[str, ...] = ("axial",)
    loss_folds: tuple[int, ...] = (3,)
    loss_max_epochs: int = 150


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    seed: int = 42
    workers: int = 0
    onednn: bool = True
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    bins: BinsConfig = field(default_factory=BinsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    cv: CrossValidationConfig = field(default_factory=CrossValidationConfig)
    batches: BatchConfig = field(default_factory=BatchConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def validate(self) -> "Config":
        """This config, once every value has been checked against its range: a
        :class:`~strokeseg.errors.ConfigError` naming the first value that is not in it."""
        _check(self.profile in PROFILES, f"profile must be one of {sorted(PROFILES)}, not {self.profile!r}")
        _whole("seed", self.seed, 0, MAX_SEED)
        _whole("workers", self.workers, 0, MAX_WORKERS)
        self._validate_dataset()
        for name in ("volume_edges", "axial_edges", "sagittal_edges", "coronal_edges"):
            edges = getattr(self.bins, name)
            _check(len(edges) >= 2 and edges[0] >= 0 and all(a < b for a, b in zip(edges, edges[1:])),
                   f"bins.{name} must be >= 0 and strictly increasing, not {list(edges)}")
        _check(0.0 < self.split.holdout_fraction < 1.0, "split.holdout_fraction must be in (0, 1)")
        self._validate_convert()
        _whole("cv.n_folds", self.cv.n_folds, 2, MAX_FOLDS)
        _number("cv.normal_ratio", self.cv.normal_ratio, 0.0)
        _number("cv.min_brain_fraction", self.cv.min_brain_fraction, 0.0, 1.0)
        _whole("cv.edge_slices", self.cv.edge_slices, 0, MAX_EDGE_SLICES)
        b = self.batches
        _whole("batches.batch_size", b.batch_size, 1)
        _check(0 < b.lesion_per_batch <= b.batch_size, "batches.lesion_per_batch must be in 1..batch_size")
        _check(0.0 < b.inner_validation_fraction < 1.0, "batches.inner_validation_fraction must be in (0, 1)")
        _check(b.kind in BATCH_KINDS, f"batches.kind must be one of {BATCH_KINDS}, not {b.kind!r}")
        _number("batches.foreground_floor", b.foreground_floor, 0.0, low_open=True)
        _check(len(self.prepare.channels) > 0 and all(1 <= c <= MAX_SLICE_CHANNELS for c in self.prepare.channels),
               f"prepare.channels must be slice counts in 1..{MAX_SLICE_CHANNELS}, not {list(self.prepare.channels)}")
        _check(len(self.prepare.planes) > 0 and all(p in PLANES for p in self.prepare.planes),
               f"prepare.planes must be among {PLANES}")
        self._validate_training()
        self._validate_comparison()
        p = self.postprocess
        _check(p.rule in POSTPROCESS_RULES, f"postprocess.rule must be one of {POSTPROCESS_RULES}, not {p.rule!r}")
        _whole("postprocess.min_lesion_voxels", p.min_lesion_voxels, 0)
        return self

    def _validate_dataset(self) -> None:
        d = self.dataset
        _check(d.source in SYNTHETIC_SOURCES + READER_SOURCES,
               f"dataset.source must be one of {SYNTHETIC_SOURCES + READER_SOURCES}")
        name = "atlas_dir (or data_dir)" if d.source == "atlas" else "data_dir"
        _check(d.source in SYNTHETIC_SOURCES or bool(d.folder),
               f"dataset.{name} is required when dataset.source is {d.source!r}")
        most_subjects, most_downsample = SYNTHETIC_LIMITS.get(d.source, (None, None))
        _whole("dataset.n_subjects", d.n_subjects, 1, most_subjects)
        _whole("dataset.downsample", d.downsample, 1, most_downsample)
        _whole("dataset.synthetic_seed", d.synthetic_seed, 0, MAX_SEED)
        _check(d.grid_plan in ("auto", "fixed", "target_spacing"),
               "dataset.grid_plan must be auto, fixed or target_spacing")
        _check(len(d.target_spacing) in (0, 3) and all(s > 0 for s in d.target_spacing),
               "dataset.target_spacing must be [] (the median) or three sizes > 0 in mm")
        _check(len(d.spacing) in (0, 3) and all(s > 0 for s in d.spacing),
               "dataset.spacing must be [] (unknown) or three sizes > 0 in mm")
        _whole("dataset.label", d.label, 1)
        _check(all(c.strip() for c in d.channels), "dataset.channels must be non-empty names")
        _check(len(set(d.channels)) == len(d.channels), "dataset.channels must not repeat a channel")

    def _validate_convert(self) -> None:
        c = self.convert
        _check(c.normalization in ("volume_robust", "slice_max"),
               "convert.normalization must be 'volume_robust' or 'slice_max'")
        _check(c.store_dtype in ("uint8", "float16", "float32"),
               "convert.store_dtype must be uint8, float16 or float32")
        window = list(c.robust_percentiles)
        _check(len(window) == 2 and 0.0 <= window[0] < window[1] <= 100.0,
               f"convert.robust_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, not {window}")
        _check(c.head_region in HEAD_REGIONS, f"convert.head_region must be one of {HEAD_REGIONS}")
        _whole("convert.canvas_multiple", c.canvas_multiple, 1, 256)
        _check(len(c.ct_window) == 2 and c.ct_window[0] < c.ct_window[1],
               f"convert.ct_window must be [lo, hi] with lo < hi, not {list(c.ct_window)}")
        _check(c.mr_normalization in MR_NORMALIZATIONS,
               f"convert.mr_normalization must be one of {MR_NORMALIZATIONS}, not {c.mr_normalization!r}")
        window = list(c.clip_percentiles)
        _check(len(window) == 2 and 0.0 <= window[0] < window[1] <= 100.0,
               f"convert.clip_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, not {window}")

    def _validate_training(self) -> None:
        t = self.training
        _check(t.model in MODEL_NAMES, f"training.model must be one of {MODEL_NAMES}, not {t.model!r}")
        _check(t.loss in LOSS_NAMES, f"training.loss must be one of {LOSS_NAMES}, not {t.loss!r}")
        _check(t.optimizer in OPTIMIZERS, f"training.optimizer must be one of {OPTIMIZERS}")
        _check(t.schedule in SCHEDULES, f"training.schedule must be one of {SCHEDULES}")
        _check(t.precision in PRECISIONS, f"training.precision must be one of {PRECISIONS}")
        _check(t.learning_rate > 0, "training.learning_rate must be > 0")
        _number("training.weight_decay", t.weight_decay, 0.0)
        _number("training.momentum", t.momentum, 0.0, 1.0, high_open=True)
        _number("training.clipnorm", t.clipnorm, 0.0)
        _whole("training.decay_steps", t.decay_steps, 1)
        _number("training.decay_rate", t.decay_rate, 0.0, 1.0, low_open=True)
        _whole("training.restart_epochs", t.restart_epochs, 1)
        _number("training.min_learning_rate", t.min_learning_rate, 0.0, t.learning_rate, high_open=True)
        _whole("training.max_epochs", t.max_epochs, 1)
        _whole("training.patience", t.patience, 1)
        _number("training.min_delta", t.min_delta, 0.0)
        _check(t.steps_per_epoch >= 0 and t.validation_steps >= 0, "steps must be >= 0 (0 = all batches)")
        _check(0.0 < t.plateau_factor <= 1.0, "training.plateau_factor must be in (0, 1]")
        _whole("training.plateau_patience", t.plateau_patience, 0)
        _check(t.plateau_factor == 1.0 or (t.plateau_patience >= 1 and t.schedule == "constant"),
               "training.plateau_factor < 1 needs plateau_patience >= 1 and schedule=constant")
        _check(0.0 <= t.flip_probability <= 1.0, "training.flip_probability must be in [0, 1]")
        _number("training.max_rotation_degrees", t.max_rotation_degrees, 0.0, 180.0)
        _check(0.0 <= t.max_scaling < 1.0, "training.max_scaling must be in [0, 1)")
        error = intensity_settings_error(t)
        _check(error is None, f"training.{error}")
        _whole("training.eval_batch_size", t.eval_batch_size, 1)
        _whole("training.parallel_runs", t.parallel_runs, 1, 64)
        _check(t.batchnorm_momentum is None or 0.0 <= t.batchnorm_momentum < 1.0,
               "training.batchnorm_momentum must be null or in [0, 1)")
        _check(len(t.patch_size) in (0, 3) and all(int(p) == p and p >= 16 and p % 16 == 0 for p in t.patch_size),
               "training.patch_size must be [] (from the grid plan) or three sizes, multiples of 16")
        _check(min(t.patch_batch_size, t.patch_steps, t.patch_validation_steps) >= 1,
               "training.patch_batch_size, patch_steps and patch_validation_steps must be >= 1")
        _check(0.0 < t.window_step <= 0.5, "training.window_step must be in (0, 0.5] (a fraction of the patch)")
        _check(t.selection in SELECTIONS, f"training.selection must be one of {SELECTIONS}, not {t.selection!r}")
        _whole("training.overlay_every", t.overlay_every, 1)
        _whole("training.overlay_count", t.overlay_count, 0, MAX_OVERLAYS)

    def _validate_comparison(self) -> None:
        t, c = self.training, self.comparison
        unknown = [m for m in c.models if m not in MODEL_NAMES]
        _check(not unknown, f"comparison.models: unknown model(s) {unknown}; choose among {MODEL_NAMES}")
        unknown = [loss for loss in c.losses if loss not in LOSS_NAMES]
        _check(not unknown, f"comparison.losses: unknown loss(es) {unknown}; choose among {LOSS_NAMES}")
        _check(c.recipe in ("published", "raxnet"), "comparison.recipe must be 'published' or 'raxnet'")
        _check(c.max_epochs >= 1 and c.loss_max_epochs >= 1, "comparison.max_epochs and loss_max_epochs must be >= 1")
        for name, planes in (("training.planes", t.planes), ("comparison.planes", c.planes),
                             ("comparison.loss_planes", c.loss_planes)):
            _check(len(planes) > 0 and all(p in PLANES for p in planes), f"{name} must be among {PLANES}")
        for name, folds in (("training.folds", t.folds), ("comparison.folds", c.folds),
                            ("comparison.loss_folds", c.loss_folds)):
            _check(all(1 <= k <= self.cv.n_folds for k in folds), f"{name} must be within 1..cv.n_folds")

    def training_folds(self, folds: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The folds a stage trains: the given ones, or every fold when none are given."""
        return tuple(folds) or tuple(range(1, self.cv.n_folds + 1))

    @property
    def synthetic(self) -> bool:
        return self.dataset.source in SYNTHETIC_SOURCES


# Intensity augmentation (strokeseg.train.intensity_augmentation, which draws in this order: nnU-Net's)
# and its ranges, each with whether its lower end must be > 0 (else >= 0).
INTENSITY_TRANSFORMS = ("noise", "blur", "brightness", "contrast", "low_resolution", "inverted_gamma", "gamma")
INTENSITY_RANGES = (("noise_variance", False), ("blur_sigma", False), ("brightness_range", True),
                    ("contrast_range", True), ("low_resolution_zoom", True), ("gamma_range", True))


def intensity_settings_error(settings) -> str | None:
    """The first invalid intensity-augmentation setting of ``settings`` (a :class:`TrainingConfig` or
    an ``IntensityAugmentation``: the same fields) as a message, None when every one is valid."""
    for name in INTENSITY_TRANSFORMS:
        p = getattr(settings, f"{name}_probability")
        if not 0.0 <= p <= 1.0:
            return f"{name}_probability must be in [0, 1], not {p}"
    for name, positive in INTENSITY_RANGES:
        pair = tuple(getattr(settings, name))
        if len(pair) != 2 or not (0.0 < pair[0] if positive else 0.0 <= pair[0]) or not pair[0] <= pair[1] \
                or not math.isfinite(pair[1]):
            return f"{name} must be [lo, hi] with {'0 <' if positive else '0 <='} lo <= hi, not {list(pair)}"
    if settings.low_resolution_zoom[1] > 1.0:
        return f"low_resolution_zoom must be within (0, 1], not {list(settings.low_resolution_zoom)}"
    return None


OPTIMIZERS = ("adamw", "adam", "sgd")
MODEL_NAMES = tuple(MODULES)
# strokeseg.train.losses.LOSSES's names (that module imports Keras; a test keeps the two equal).
LOSS_NAMES = ("dice", "tversky", "binary_focal", "binary_crossentropy", "tversky_plus_focal", "focal_tversky",
              "bce_dice", "soft_dice_squared", "dunet_mixing", "lcnn")
MAX_SEED = 2 ** 32 - 1           # NumPy's legacy seeding and scikit-learn's random_state take 32-bit seeds
MAX_WORKERS = 1024
MAX_FOLDS = 100
MAX_SLICE_CHANNELS = 15          # adjacent slices read as channels by one 2-D input
HEAD_REGIONS = ("robust", "nonzero")
MR_NORMALIZATIONS = ("zscore", "clip_zscore")
MAX_EDGE_SLICES = 64
# Kinds whose plan is every candidate slice of a part (strokeseg.protocol.weighted_sampling), drawn afresh each
# epoch: with replacement by foreground weight (the LGG U-Net), or each slice once, shuffled (the CT projects).
POOL_BATCH_KINDS = ("foreground_weighted", "every_slice")
BATCH_KINDS = ("distribution", *POOL_BATCH_KINDS)
SELECTIONS = ("val_loss", "subject_dice")
MAX_OVERLAYS = 64
POSTPROCESS_RULES = ("none", "min_size", "largest", "auto")
SCHEDULES = ("constant", "exponential", "cosine", "cosine_restarts")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


# One line per config value, keyed by its dotted name (what --set takes); each stage's --help lists
# those it reads (strokeseg.cli), with the profiles' values, through describe_fields below.
FIELD_HELP: dict[str, str] = {
    "profile": "the profile this config was built from (recorded only; chosen with dataset --profile)",
    "seed": "protocol seed: split, folds, normal slices, batches, weight init and batch order derive from it",
    "workers": "processes for per-volume work; 0 = one per CPU core",
    "onednn": "TensorFlow's oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS, if not exported); the demo turns them off: "
              "they crashed training narrow RAX-Nets",

    "dataset.source": '"synthetic" (ATLAS-like T1), "synthetic_multimodal" (ISLES-like DWI + ADC, a grid per '
                      'subject), or a reader: atlas, isles22, nnunet, png_slices, kaggle_3m (--dataset)',
    "dataset.atlas_dir": "root of the ATLAS v2.0 BIDS tree (older name of data_dir; --atlas-dir)",
    "dataset.data_dir": "root folder of the dataset read by dataset.source (--data-dir)",
    "dataset.n_subjects": "size of the synthetic cohort (unused for atlas)",
    "dataset.downsample": "integer downsampling factor of the synthetic volumes (tiny test cohorts)",
    "dataset.binarize_masks": "accept masks with values other than 0/1 by taking mask > 0 (else an error)",
    "dataset.synthetic_seed": "seed of the synthetic cohort itself (independent of seed)",
    "dataset.channels": "image channels to use, in this order; [] = the reader's default (ISLES'22: dwi, adc)",
    "dataset.label": "nnunet: the label value that is the lesion",
    "dataset.resample_flair": "isles22: accept FLAIR by resampling it onto the DWI grid (world coordinates; "
                              "not registration)",
    "dataset.spacing": "slice folders: voxel size [x, y, z] in mm; [] = unknown (mL and mm reported in voxels)",
    "dataset.grid_plan": "auto (fixed when all subjects share one grid), fixed, or target_spacing (nnU-Net's rule: "
                         "each subject resampled to one voxel size)",
    "dataset.target_spacing": "target_spacing plan: voxel size in mm; [] = the median voxel size per axis",
    "dataset.lesion_locations": "hemisphere, atlas regions and class of every lesion, and the lesion-frequency map "
                                "(cohorts in MNI space; others skip them with a logged line)",

    "bins.volume_edges": "3-D lesion-volume bin edges, voxels, lo < v <= hi; they stratify split, folds, inner val.",
    "bins.axial_edges": "axial lesion-slice size bin edges, pixels, lo < v <= hi; batches draw from every bin",
    "bins.sagittal_edges": "sagittal lesion-slice size bin edges, pixels, lo < v <= hi",
    "bins.coronal_edges": "coronal lesion-slice size bin edges, pixels, lo < v <= hi",

    "split.holdout_fraction": "share of each volume bin's subjects held out for the 3-D fusion evaluation (stage 10)",

    "convert.normalization": '"volume_robust": percentile window per volume, shared by the planes; '
                             '"slice_max": upstream x / max * 255 per slice',
    "convert.robust_percentiles": "[lo, hi] percentiles of the head voxels mapped to 0..255 (volume_robust)",
    "convert.head_region": '"robust": the voxels whose percentiles set the volume_robust window are found without '
                           'relying on an exact-zero background (strokeseg.data.head_region); "nonzero": T1 > 0',
    "convert.canvas_multiple": "canvas sides: next multiple of this (16 on the ATLAS grid: upstream's canvases)",
    "convert.store_dtype": "dtype of the stored 0..255 intensities: uint8, float16 or float32",
    "convert.ct_window": "CT channels: Hounsfield window [lo, hi] mapped to 0..255 (clipped)",
    "convert.mr_normalization": '"zscore": MR channels z-scored over their non-zero voxels; "clip_zscore": '
                                'clipped to the clip_percentiles of all voxels first, then z-scored over all '
                                'voxels (the LGG U-Net\'s rule)',
    "convert.clip_percentiles": "clip_zscore: [lo, hi] percentiles of each MR channel's voxels it is clipped to",

    "cv.n_folds": "subject-level cross-validation folds, shared by the three planes",
    "cv.normal_ratio": "lesion-free slices drawn per lesion slice, per subject",
    "cv.min_brain_fraction": "a lesion-free slice is used only if brain covers this fraction of its pixels",
    "cv.edge_slices": "slices at each end of a subject's stack never trained or validated on (the LGG U-Net "
                      "drops 1); stage 10 still predicts and scores the whole volume",

    "batches.batch_size": "slices per batch: lesion_per_batch lesion slices, the rest lesion-free",
    "batches.lesion_per_batch": "lesion slices per batch, spread over the slice size bins",
    "batches.inner_validation_fraction": "share of each fold's subjects kept for model selection, never fitted",
    "batches.fixed_order": "true: the same batch order every epoch (upstream); false: reshuffled per epoch",
    "batches.kind": '"distribution": lesion slices by size bin + normals (RAX-Net); "foreground_weighted": every '
                    "slice drawn with replacement, weight (lesion pixels + floor) per subject (the LGG U-Net's "
                    'sampler), a fresh draw per epoch; "every_slice": every slice once per epoch, reshuffled (the CT '
                    "projects' loaders)",
    "batches.foreground_floor": "foreground_weighted: the floor shared by a subject's slices, as a share of its "
                                "lesion pixels (the LGG U-Net: 0.1)",

    "prepare.channels": "input channel counts to prepare (adjacent slices): 1 for 2-D models, 3 LCNN, 4 D-UNet",
    "prepare.planes": "planes to prepare (stage 07 measures these by default)",

    "training.model": "model of stage 08 (09's reference, fused by 10): a strokeseg.models name, e.g. raxnet, unet",
    "training.model_options": 'keyword arguments of the model\'s build, e.g. {"width": 0.125}',
    "training.loss": "loss (strokeseg.train.losses); default: upstream's FocalTverskyLoss, (1 - Tversky) + focal BCE",
    "training.loss_options": 'keyword arguments of the loss, e.g. {"fn_weight": 0.7}',
    "training.optimizer": "adamw, adam or sgd",
    "training.learning_rate": "initial learning rate",
    "training.weight_decay": "AdamW weight decay (adamw only)",
    "training.momentum": "SGD momentum (sgd only)",
    "training.clipnorm": "gradient-norm clipping; 0 = none",
    "training.schedule": "learning-rate schedule: constant, exponential, cosine (over max_epochs), cosine_restarts",
    "training.decay_steps": "exponential schedule: lr * decay_rate ^ (step / decay_steps)",
    "training.decay_rate": "exponential schedule: factor per decay_steps optimizer steps",
    "training.restart_epochs": "cosine_restarts: first period in epochs (doubles at each restart)",
    "training.min_learning_rate": "floor of the cosine schedules",
    "training.plateau_factor": "< 1: multiply lr by this after plateau_patience epochs without a better "
                               "inner-validation loss (constant schedule only)",
    "training.plateau_patience": "epochs without a better inner-validation loss before a plateau reduction",
    "training.max_epochs": "most epochs per (plane, fold) run",
    "training.patience": "early stopping: epochs without a better inner-validation loss (upstream ignored it)",
    "training.min_delta": "smallest fall of the inner-validation loss that counts as better",
    "training.steps_per_epoch": "training steps per epoch; 0 = every training batch once",
    "training.validation_steps": "inner-validation batches per epoch; 0 = all of them",
    "training.augment": "random flip, rotation and zoom of training batches (upstream had none)",
    "training.flip_probability": "augment: left-right flip probability (sagittal slices are never flipped)",
    "training.max_rotation_degrees": "augment: rotation angle drawn from +- this many degrees",
    "training.max_scaling": "augment: zoom factor drawn from [1 - s, 1 + s]",
    "training.intensity_augment": "nnU-Net's intensity augmentations of training images (noise, blur, brightness, "
                                  "contrast, low resolution, gamma); masks untouched; upstream had none",
    "training.noise_probability": "intensity: probability of additive Gaussian noise",
    "training.noise_variance": "intensity: noise level drawn from [lo, hi]: the noise's standard deviation in "
                               "units of the foreground's (nnU-Net's 'variance' range, used as a std on its "
                               "z-scored images)",
    "training.blur_probability": "intensity: probability of a Gaussian blur",
    "training.blur_sigma": "intensity: blur sigma in pixels drawn from [lo, hi]",
    "training.brightness_probability": "intensity: probability of a multiplicative brightness change",
    "training.brightness_range": "intensity: brightness multiplier drawn from [lo, hi] (half the draws below 1)",
    "training.contrast_probability": "intensity: probability of a contrast change about the image mean",
    "training.contrast_range": "intensity: contrast factor drawn from [lo, hi] (half the draws below 1)",
    "training.low_resolution_probability": "intensity: probability of simulated low resolution",
    "training.low_resolution_zoom": "intensity: downsampling factor drawn from [lo, hi] (nearest down, linear up, "
                                    "as nnU-Net v2)",
    "training.gamma_probability": "intensity: probability of a gamma change (mean and std kept)",
    "training.inverted_gamma_probability": "intensity: probability of a gamma change of the inverted image",
    "training.gamma_range": "intensity: gamma drawn from [lo, hi] (half the draws below 1)",
    "training.precision": "auto (mixed_float16 on a visible GPU, else float32), float32, mixed_float16, mixed_bfloat16",
    "training.require_gpu": "stop stages 08/09 with an error when no GPU is visible, instead of training on the CPU",
    "training.run_eagerly": "Keras' run_eagerly: training, validation and test-fold steps run op by op instead of "
                            "as traced graphs; for debugging (a breakpoint in a loss or a layer) and one-step smoke "
                            "runs, where tracing takes longer than the steps; far slower per step on real data",
    "training.planes": "planes to train",
    "training.folds": "test folds to run; [] = every fold",
    "training.batchnorm_momentum": "moving-average momentum of every batch-norm layer while training; null = the "
                                   "model's own (Keras 0.99; PyTorch's default is 0.9)",
    "training.eval_batch_size": "batch size of test-fold evaluation (and of stage 10's inference, unless --batch-size)",
    "training.parallel_runs": "stages 08 and 09 on a CPU: runs (planes, folds, models) trained at once, each in a "
                              "process with its share of the cores; narrow networks train faster side by side, "
                              "but not bit-reproducibly (README, 08_training); one after another with a GPU",
    "training.patch_size": "3-D models: patch (x, y, z), multiples of 16; [] = the grid plan's shape rounded up to "
                           "16, at most 128 per axis",
    "training.patch_batch_size": "3-D models: patches per batch, a third of them (rounded) centred on a lesion voxel",
    "training.patch_steps": "3-D models: patch batches per epoch (nnU-Net: 250)",
    "training.patch_validation_steps": "3-D models: inner-validation patch batches per epoch, the same ones every "
                                       "epoch (nnU-Net: 50)",
    "training.deep_supervision": "3-D models: train with nnU-Net's deep-supervision loss on the decoder's lower "
                                 "scales (the saved model has the main head only)",
    "training.window_step": "3-D models: sliding-window step as a fraction of the patch, at most 0.5 "
                            "(test-fold evaluation, stage 10 and predict)",
    "training.selection": '"val_loss": the epoch with the lowest inner-validation loss; "subject_dice": the '
                          "highest mean per-subject Dice of the inner-validation volumes, after postprocess.rule",
    "training.tensorboard": "TensorBoard event files in each run's tensorboard/ folder (tensorboard --logdir)",
    "training.overlay_every": "TensorBoard: prediction overlays of inner-validation slices every N epochs",
    "training.overlay_count": "TensorBoard: inner-validation slices shown per overlay; 0 = none",

    "comparison.models": "models compared with training.model under the same protocol",
    "comparison.recipe": '"published": each model\'s published loss and optimiser; "raxnet": the training section\'s',
    "comparison.model_options": 'build options per model, e.g. {"lcnn": {"width": 0.125}}',
    "comparison.planes": "planes of the model comparison",
    "comparison.folds": "test folds of the model comparison; [] = every fold",
    "comparison.max_epochs": "most epochs per model-comparison run",
    "comparison.losses": "losses of the loss comparison (each trains training.model); [] = no loss comparison",
    "comparison.loss_planes": "planes of the loss comparison",
    "comparison.loss_folds": "test folds of the loss comparison; [] = every fold",
    "comparison.loss_max_epochs": "most epochs per loss-comparison run",

    "postprocess.rule": '"none": every component kept; "min_size": components below min_lesion_voxels removed; '
                        '"largest": the largest component only; "auto": the best of the sizes and "largest" on '
                        "cross-validation predictions",
    "postprocess.min_lesion_voxels": "min_size: the smallest component kept, in voxels (6-connected)",
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _whole(key: str, value: int, low: int, high: int | None = None) -> None:
    """A whole-number value within [low, high] (no upper end when ``high`` is None)."""
    _check(low <= value and (high is None or value <= high),
           f"{key} must be a whole number in {low}..{'' if high is None else high}, not {value}")


def _number(key: str, value: float, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> None:
    """A finite number within the interval from ``low`` to ``high``, each end open or closed."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    _check(math.isfinite(value) and above and below, f"{key} must be in {'(' if low_open else '['}{low:g}, "
                                                      f"{high:g}{')' if high_open else ']'}, not {value}")


# Profiles -----------------------------------------------------------------------------------------
# "raxnet" (alias "paper"): the upstream protocol's numbers (655 subjects, 80/20, 5 folds, batches
# 16+16, canvases), with the corrections of docs/upstream-raxnet.md §14 that the README's protocol
# section lists. "demo": the same protocol on a small synthetic cohort that runs on a 2-core CPU.
# "lgg", "lcnn", "strokeseg-ct", "isles3d": each source project's system as published
# (docs/upstream-other-projects.md D, A, B, C), through the same stages, folds and tables; the README's
# profile table lists every place where one differs from its project's code. Their training values
# are each model's published recipe (strokeseg.train.recipes, which a test keeps equal) plus what the
# project fixed besides: batch, epochs, stopping, selection, augmentation, sampler, post-processing.
_RAXNET: dict[str, object] = {}
# Every profile but raxnet compares the other source systems' 2-D models under its own protocol, so
# stage 06 prepares one slice (four of them) and three adjacent slices (LCNN).
_OTHERS = ("raxnet", "unet", "lcnn", "resunet", "attention_unet")
PROFILES: dict[str, dict[str, object]] = {
    "raxnet": _RAXNET,
    "paper": _RAXNET,
    # Tuned for 01 -> 10 on 2 CPU cores at the real 197x233x189 grid (README, Results): a RAX-Net at 1/8
    # width (78,733 parameters) trains 240 steps per plane, the three planes side by side; short runs
    # need the head's bias at the lesion prior and batch-norm statistics that follow the weights. Stage
    # 09 trains its U-Net for 1 epoch (30 steps): it shows the stage at work, it is not a fair comparison.
    # 60 subjects rather than 40: the same steps see more sites and heads, and the hold-out has 13
    # subjects instead of 9, so one or two of them move its mean Dice less (README, Results).
    "demo": {"dataset.n_subjects": 60, "onednn": False,
             "training.model_options": {"width": 0.125, "output_prior": 0.01},
             "training.learning_rate": 0.003, "training.schedule": "cosine", "training.batchnorm_momentum": 0.9,
             "training.max_epochs": 8, "training.patience": 8, "training.steps_per_epoch": 30,
             "training.folds": [1], "training.parallel_runs": 3, "training.augment": True,
             "training.intensity_augment": True,
             "comparison.models": ["unet"], "comparison.recipe": "raxnet",
             "comparison.model_options": {"unet": {"base_filters": 4}}, "comparison.planes": ["axial"],
             "comparison.folds": [1], "comparison.max_epochs": 1, "comparison.losses": []},
    # D: the kaggle_3m U-Net (base 32, three MR channels), D.1-D.5.
    "lgg": {"prepare.channels": [1, 3], "convert.mr_normalization": "clip_zscore",
            "convert.clip_percentiles": [10.0, 99.0],
            "cv.edge_slices": 1, "batches.kind": "foreground_weighted", "batches.foreground_floor": 0.1,
            "batches.batch_size": 16, "batches.lesion_per_batch": 8,
            "training.model": "unet", "training.model_options": {"base_filters": 32},
            "training.loss": "dice", "training.loss_options": {"per_sample": True}, "training.optimizer": "adam",
            "training.learning_rate": 1e-4, "training.schedule": "cosine", "training.min_learning_rate": 0.0,
            "training.max_epochs": 100, "training.patience": 100, "training.selection": "subject_dice",
            "training.augment": True, "training.flip_probability": 0.5, "training.max_rotation_degrees": 15.0,
            "training.max_scaling": 0.05, "postprocess.rule": "largest",
            "comparison.models": [m for m in _OTHERS if m != "unet"], "comparison.losses": []},
    # A: LCNN on CT PNG slice folders, 2.5-D (three adjacent slices), A.1-A.5.
    "lcnn": {"prepare.channels": [1, 3], "batches.kind": "every_slice", "batches.batch_size": 4,
             "batches.lesion_per_batch": 2,
             "training.model": "lcnn", "training.model_options": {}, "training.loss": "lcnn",
             "training.loss_options": {}, "training.optimizer": "adamw", "training.learning_rate": 1e-5,
             "training.weight_decay": 1e-4, "training.clipnorm": 0.1, "training.schedule": "cosine_restarts",
             "training.restart_epochs": 10, "training.min_learning_rate": 1e-6,
             "training.max_epochs": 300, "training.patience": 300, "training.selection": "subject_dice",
             "comparison.models": [m for m in _OTHERS if m != "lcnn"], "comparison.losses": []},
    # B: the ResNet-50 U-Net on CT slices, B.2; ImageNet weights only from a local file
    # (training.model_options={"encoder_weights": PATH}), random initialisation by default.
    "strokeseg-ct": {"prepare.channels": [1, 3], "batches.kind": "every_slice", "batches.batch_size": 8,
                     "batches.lesion_per_batch": 4,
                     "training.model": "resunet", "training.model_options": {},
                     "training.loss": "binary_crossentropy", "training.loss_options": {}, "training.optimizer": "adamw",
                     "training.learning_rate": 1e-4, "training.weight_decay": 0.01, "training.schedule": "constant",
                     "training.max_epochs": 200, "training.patience": 5,
                     "comparison.models": [m for m in _OTHERS if m != "resunet"], "comparison.losses": []},
    # C: the 3-D attention U-Net on ISLES'22 DWI + ADC, C.1-C.7 (the synthetic ISLES-like cohort
    # without --data-dir). C's own intensity transforms through nnU-Net's set: per-channel scale
    # U(0.9, 1.1) p 0.3, blur sigma U(0.3, 0.7) p 0.25, noise sigma 0.02 p 0.3, nothing else.
    "isles3d": {"dataset.source": "synthetic_multimodal",
                "training.model": "attention_unet3d", "training.model_options": {},
                "training.loss": "focal_tversky", "training.loss_options": {}, "training.optimizer": "adamw",
                "training.learning_rate": 1e-4, "training.weight_decay": 2e-4, "training.clipnorm": 1.0,
                "training.schedule": "constant", "training.plateau_factor": 0.5, "training.plateau_patience": 10,
                "training.max_epochs": 100, "training.patience": 15, "training.patch_size": [112, 112, 80],
                "training.patch_batch_size": 2, "training.deep_supervision": True,
                "training.augment": True, "training.flip_probability": 0.5, "training.max_rotation_degrees": 0.0,
                "training.max_scaling": 0.0, "training.intensity_augment": True,
                "training.noise_probability": 0.3, "training.noise_variance": [0.02, 0.02],
                "training.blur_probability": 0.25, "training.blur_sigma": [0.3, 0.7],
                "training.brightness_probability": 0.3, "training.brightness_range": [0.9, 1.1],
                "training.contrast_probability": 0.0, "training.low_resolution_probability": 0.0,
                "training.gamma_probability": 0.0, "training.inverted_gamma_probability": 0.0,
                "comparison.models": ["unet3d"], "comparison.losses": []},
}
# The source project each profile reproduces, and the data it was published on (README, Profiles).
PROFILE_SOURCES = {"raxnet": "RAX-Net (ATLAS v2.0 T1, tri-planar)", "paper": "alias of raxnet",
                   "demo": "RAX-Net's protocol, small synthetic cohort", "lgg": "LGG U-Net (kaggle_3m TIFF slices)",
                   "lcnn": "LCNN/SEAN (CT PNG slice folders)", "strokeseg-ct": "StrokeSeg ResNet-50 U-Net (CT slices)",
                   "isles3d": "3-D attention U-Net (ISLES'22 DWI + ADC)"}


def load_profile(name: str, overrides: typing.Iterable[str] = ()) -> Config:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    config = Config(profile=name)
    config = apply_overrides(config, [f"{k}={json.dumps(v)}" for k, v in PROFILES[name].items()])
    return apply_overrides(config, overrides).validate()


def apply_overrides(config: Config, overrides: typing.Iterable[str]) -> Config:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        config = _set(config, key.strip().split("."), raw.strip(), key)
    return config


def _set(obj, path: list[str], raw: str, key: str):
    names = {f.name: f for f in fields(obj)}
    if path[0] not in names:
        raise ConfigError(f"unknown config key {key!r}")
    f = names[path[0]]
    current = getattr(obj, f.name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {key!r}")
        return replace(obj, **{f.name: _set(current, path[1:], raw, key)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config key {key!r} is a section; set one of its fields")
    hint = typing.get_type_hints(type(obj))[f.name]
    return replace(obj, **{f.name: _coerce(_parse(raw), hint, key)})


def _parse(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a bare string such as slice_max


def _coerce(value, hint, key):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key {key!r}: {value!r} is not a JSON object")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else object
        return tuple(_coerce(v, elem, key) for v in value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if hint is float:
            number = math.inf if value in ("inf", "Infinity") else float(value)
            # Only bin edges may be infinite ("inf", the open last bin); 1e400 is infinity to JSON.
            if math.isnan(number) or (math.isinf(number) and not key.startswith("bins.")):
                raise ValueError
            return number
        if hint is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise ConfigError(f"config key {key!r}: {value!r} is not a valid {getattr(hint, '__name__', hint)}")


# Serialisation ------------------------------------------------------------------------------------
def to_dict(config: Config) -> dict:
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n"


def from_dict(data: dict) -> Config:
    config = Config()
    flat = []
    for section, content in data.items():
        if isinstance(content, dict):
            flat += [f"{section}.{k}={json.dumps(v)}" for k, v in content.items()]
        else:
            flat.append(f"{section}={json.dumps(content)}")
    return apply_overrides(config, flat).validate()


def read_config(path: Path) -> Config:
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.__class__.__name__}: {exc})") from exc


def restrict_planes(config: Config, planes: tuple[str, ...]) -> Config:
    """``config`` with every plane list (prepare, training, comparison) cut to a cohort's ``planes``
    (slice-folder cohorts have the axial plane only); a list left empty becomes ``planes``."""
    def keep(wanted):
        return tuple(p for p in wanted if p in planes) or tuple(planes)
    return replace(config, prepare=replace(config.prepare, planes=keep(config.prepare.planes)),
                   training=replace(config.training, planes=keep(config.training.planes)),
                   comparison=replace(config.comparison, planes=keep(config.comparison.planes),
                                      loss_planes=keep(config.comparison.loss_planes)))


def derive_seed(seed: int, *parts: object) -> int:
    """A stable sub-seed for one purpose (e.g. ("normals", "axial", 3)), independent of call order."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


# Descriptions -------------------------------------------------------------------------------------
def describe_fields(keys: typing.Iterable[str],
                    exclude: typing.Iterable[str] = ()) -> list[tuple[str, str, str | None, str]]:
    """``(key, paper value, demo value or None where the same, help)`` per config value, values as JSON.

    ``keys`` name a section (``"training"``), one value (``"bins.volume_edges"``, ``"seed"``) or, with
    ``""``, every top-level value; the result follows their order (a section's in declaration order),
    once each, less the values in ``exclude``. Values are read from the profiles, never copied."""
    paper, demo = _flat(load_profile("paper")), _flat(load_profile("demo"))
    chosen: list[str] = []
    for key in keys:
        if key == "":
            matched = [k for k in paper if "." not in k]
        elif key in paper:
            matched = [key]
        else:
            matched = [k for k in paper if k.startswith(key + ".")]
        if not matched:
            raise ConfigError(f"unknown config key or section {key!r}")
        chosen += [k for k in matched if k not in chosen]
    skipped = set(exclude)
    if skipped - set(paper):
        raise ConfigError(f"unknown config keys {sorted(skipped - set(paper))}")
    rows = []
    for key in chosen:
        if key not in skipped:
            value, other = _render(paper[key]), _render(demo[key])
            rows.append((key, value, other if other != value else None, FIELD_HELP[key]))
    return rows


def field_table(keys: typing.Iterable[str], exclude: typing.Iterable[str] = (), indent: str = "  ") -> str:
    """:func:`describe_fields` as aligned lines: ``KEY  PAPER [demo: DEMO]  HELP``."""
    rows = [(key, value if other is None else f"{value} [demo: {other}]", text)
            for key, value, other, text in describe_fields(keys, exclude)]
    if not rows:
        return ""
    key_width = max(len(key) for key, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), 20)  # longer values push their text
    return "\n".join(f"{indent}{key:<{key_width}}  {value:<{value_width}}  {text}" for key, value, text in rows)


def _flat(config: Config) -> dict[str, object]:
    """Every value of ``config`` by dotted key, in declaration order (sections one level deep)."""
    flat = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{f.name}.{g.name}": getattr(value, g.name) for g in fields(value)})
        else:
            flat[f.name] = value
    return flat


def _render(value) -> str:
    """A value as ``--set`` takes it: JSON, with infinity as "inf"."""
    return json.dumps(_jsonable(value))

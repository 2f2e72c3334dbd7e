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

from strokeseg.errors import ConfigError

PLANES = ("axial", "sagittal", "coronal")

# Upstream bin edges (reference/upstream-raxnet.md §1.4, §2.1, §4.1). One convention for every
# stage: right-closed, lo < v <= hi (the splitting and k-fold convention upstream); see bins.py.
VOLUME_BIN_EDGES = (0, 5_000, 30_000, 60_000, 100_000, 200_000, math.inf)
AXIAL_CORONAL_SLICE_EDGES = (0, 200, 500, 1_000, 2_000, 3_000, math.inf)
SAGITTAL_SLICE_EDGES = (0, 500, 1_000, 2_000, 3_000, 5_000, math.inf)


@dataclass(frozen=True)
class DatasetConfig:
    source: str = "synthetic"            # "synthetic" or "atlas"
    atlas_dir: str | None = None         # root of the ATLAS v2.0 BIDS tree when source == "atlas"
    n_subjects: int = 655                # size of the synthetic cohort
    downsample: int = 1                  # integer factor for tiny synthetic cohorts (tests)
    binarize_masks: bool = False         # accept non-{0,1} masks by taking mask > 0
    synthetic_seed: int = 2022           # the synthetic cohort's own seed (independent of protocol seed)


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
    holdout_fraction: float = 0.2        # the 20 % kept for 3-D fusion evaluation


@dataclass(frozen=True)
class ConvertConfig:
    # "volume_robust": percentile clip inside the head, computed once per volume and shared by
    # the three planes (upstream-raxnet.md §14.8). "slice_max": upstream x / max * 255 per slice.
    normalization: str = "volume_robust"
    robust_percentiles: tuple[float, float] = (0.5, 99.5)
    canvas_multiple: int = 16            # generic grids are padded to the next multiple of this
    store_dtype: str = "uint8"           # intensities are on a 0..255 scale in both modes


@dataclass(frozen=True)
class CrossValidationConfig:
    n_folds: int = 5
    normal_ratio: float = 1.0            # normal slices per lesion slice, per subject
    min_brain_fraction: float = 0.05     # a slice "contains brain" above this fraction of its pixels


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = 32
    lesion_per_batch: int = 16
    inner_validation_fraction: float = 0.15   # of the training-fold subjects, for model selection
    fixed_order: bool = False            # True reproduces upstream: same batch order every epoch


@dataclass(frozen=True)
class PrepareConfig:
    channels: tuple[int, ...] = (1,)     # adjacent slices as channels: 1 (2-D), 3 (LCNN), 4 (D-UNet)
    planes: tuple[str, ...] = PLANES


@dataclass(frozen=True)
class TrainingConfig:
    """Stage 08 (and the defaults stage 09 starts from). Paper: upstream-raxnet.md §8, §8.1, §14.14."""
    model: str = "raxnet"
    model_options: dict = field(default_factory=dict)   # passed to build_model, e.g. {"width": 0.125}
    loss: str = "tversky_plus_focal"     # upstream's "FocalTverskyLoss" = (1 − Tversky) + focal BCE
    loss_options: dict = field(default_factory=dict)
    optimizer: str = "adamw"             # adamw, adam or sgd
    learning_rate: float = 1e-3
    weight_decay: float = 0.004          # adamw only
    momentum: float = 0.0                # sgd only
    clipnorm: float = 0.0                # 0 = no gradient-norm clipping
    schedule: str = "exponential"        # constant, exponential, cosine, cosine_restarts
    decay_steps: int = 100_000           # exponential: lr · decay_rate^(step / decay_steps)
    decay_rate: float = 0.9
    restart_epochs: int = 10             # cosine_restarts: first period in epochs (doubles each time)
    min_learning_rate: float = 0.0       # cosine schedules' floor
    plateau_factor: float = 1.0          # < 1: multiply lr by this after plateau_patience epochs without
    plateau_patience: int = 0            # a better validation loss (constant schedule only)
    max_epochs: int = 500
    patience: int = 50                   # early stopping on the inner-validation loss (upstream ignored it)
    min_delta: float = 0.0
    steps_per_epoch: int = 0             # 0 = every batch of the training folds once per epoch
    validation_steps: int = 0            # 0 = every inner-validation batch
    augment: bool = False                # upstream had none (§14.14)
    flip_probability: float = 0.5        # left-right flip
    max_rotation_degrees: float = 10.0
    max_scaling: float = 0.1             # zoom factor drawn from [1 − s, 1 + s]
    precision: str = "auto"              # auto (mixed_float16 on GPU, else float32), float32, mixed_float16,
                                         # mixed_bfloat16
    planes: tuple[str, ...] = PLANES
    folds: tuple[int, ...] = ()          # () = every fold
    eval_batch_size: int = 32


@dataclass(frozen=True)
class ComparisonConfig:
    """Stage 09: comparison models and the loss comparison (upstream-raxnet.md §9, §10, §14.17–19)."""
    models: tuple[str, ...] = ("xnet", "clci", "dunet", "lcnn", "unet", "resunet", "attention_unet")
    recipe: str = "published"            # each model's published loss/optimiser, or "raxnet" for RAX-Net's
    model_options: dict = field(default_factory=dict)   # per model, e.g. {"lcnn": {"width": 0.125}}
    planes: tuple[str, ...] = PLANES
    folds: tuple[int, ...] = ()          # () = every fold
    max_epochs: int = 500
    losses: tuple[str, ...] = ("dice", "binary_focal", "tversky", "tversky_plus_focal", "focal_tversky")
    loss_planes: tuple[str, ...] = ("axial",)
    loss_folds: tuple[int, ...] = (3,)   # upstream: axial, validation fold 3, 150 epochs each
    loss_max_epochs: int = 150


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    seed: int = 42
    workers: int = 0                     # processes for per-volume work; 0 = one per CPU core
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    bins: BinsConfig = field(default_factory=BinsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    cv: CrossValidationConfig = field(default_factory=CrossValidationConfig)
    batches: BatchConfig = field(default_factory=BatchConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)

    def validate(self) -> "Config":
        _check(self.dataset.source in ("synthetic", "atlas"), "dataset.source must be 'synthetic' or 'atlas'")
        _check(self.dataset.source != "atlas" or bool(self.dataset.atlas_dir),
               "dataset.atlas_dir is required when dataset.source is 'atlas'")
        _check(self.dataset.n_subjects >= 1, "dataset.n_subjects must be >= 1")
        _check(self.dataset.downsample >= 1, "dataset.downsample must be >= 1")
        _check(0.0 < self.split.holdout_fraction < 1.0, "split.holdout_fraction must be in (0, 1)")
        _check(self.convert.normalization in ("volume_robust", "slice_max"),
               "convert.normalization must be 'volume_robust' or 'slice_max'")
        _check(self.convert.store_dtype in ("uint8", "float16", "float32"),
               "convert.store_dtype must be uint8, float16 or float32")
        lo, hi = self.convert.robust_percentiles
        _check(0.0 <= lo < hi <= 100.0, "convert.robust_percentiles must satisfy 0 <= lo < hi <= 100")
        _check(self.convert.canvas_multiple >= 1, "convert.canvas_multiple must be >= 1")
        _check(self.cv.n_folds >= 2, "cv.n_folds must be >= 2")
        _check(self.cv.normal_ratio >= 0, "cv.normal_ratio must be >= 0")
        _check(0 < self.batches.lesion_per_batch <= self.batches.batch_size,
               "batches.lesion_per_batch must be in 1..batch_size")
        _check(0.0 < self.batches.inner_validation_fraction < 1.0,
               "batches.inner_validation_fraction must be in (0, 1)")
        _check(all(c >= 1 for c in self.prepare.channels), "prepare.channels must be >= 1")
        _check(all(p in PLANES for p in self.prepare.planes), f"prepare.planes must be among {PLANES}")
        for name in ("volume_edges", "axial_edges", "sagittal_edges", "coronal_edges"):
            edges = getattr(self.bins, name)
            _check(len(edges) >= 2 and all(a < b for a, b in zip(edges, edges[1:])),
                   f"bins.{name} must be strictly increasing")
        self._validate_training()
        return self

    def _validate_training(self) -> None:
        t, c = self.training, self.comparison
        _check(t.optimizer in OPTIMIZERS, f"training.optimizer must be one of {OPTIMIZERS}")
        _check(t.schedule in SCHEDULES, f"training.schedule must be one of {SCHEDULES}")
        _check(t.precision in PRECISIONS, f"training.precision must be one of {PRECISIONS}")
        _check(t.learning_rate > 0, "training.learning_rate must be > 0")
        _check(t.max_epochs >= 1 and c.max_epochs >= 1 and c.loss_max_epochs >= 1, "max_epochs must be >= 1")
        _check(t.patience >= 1, "training.patience must be >= 1")
        _check(t.steps_per_epoch >= 0 and t.validation_steps >= 0, "steps must be >= 0 (0 = all batches)")
        _check(0.0 < t.plateau_factor <= 1.0, "training.plateau_factor must be in (0, 1]")
        _check(t.plateau_factor == 1.0 or (t.plateau_patience >= 1 and t.schedule == "constant"),
               "training.plateau_factor < 1 needs plateau_patience >= 1 and schedule=constant")
        _check(0.0 <= t.flip_probability <= 1.0, "training.flip_probability must be in [0, 1]")
        _check(0.0 <= t.max_scaling < 1.0, "training.max_scaling must be in [0, 1)")
        _check(t.eval_batch_size >= 1, "training.eval_batch_size must be >= 1")
        _check(c.recipe in ("published", "raxnet"), "comparison.recipe must be 'published' or 'raxnet'")
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
        return self.dataset.source == "synthetic"


OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "exponential", "cosine", "cosine_restarts")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Profiles -----------------------------------------------------------------------------------------
# "paper": the upstream protocol's numbers (655 subjects, 80/20, 5 folds, batches 16+16, canvases),
# with the corrections of upstream-raxnet.md §14 that the README's protocol section lists.
# "demo": the same protocol on a small synthetic cohort that runs on a 2-core CPU.
PROFILES: dict[str, dict[str, object]] = {
    "paper": {},
    "demo": {"dataset.n_subjects": 40,
             "training.max_epochs": 3, "training.patience": 3, "training.steps_per_epoch": 10,
             "training.validation_steps": 5, "training.folds": [1], "training.augment": True,
             "comparison.models": ["unet"], "comparison.folds": [1], "comparison.max_epochs": 2,
             "comparison.losses": ["dice", "tversky_plus_focal"], "comparison.loss_folds": [1],
             "comparison.loss_max_epochs": 2},
}


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
            if value in ("inf", "Infinity"):
                return math.inf
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
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


def derive_seed(seed: int, *parts: object) -> int:
    """A stable sub-seed for one purpose (e.g. ("normals", "axial", 3)), independent of call order."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])

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
        return self

    @property
    def synthetic(self) -> bool:
        return self.dataset.source == "synthetic"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Profiles -----------------------------------------------------------------------------------------
# "paper": the upstream protocol's numbers (655 subjects, 80/20, 5 folds, batches 16+16, canvases),
# with the corrections of upstream-raxnet.md §14 that the README's protocol section lists.
# "demo": the same protocol on a small synthetic cohort that runs on a 2-core CPU.
PROFILES: dict[str, dict[str, object]] = {
    "paper": {},
    "demo": {"dataset.n_subjects": 40},
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

"""Tri-planar fusion of per-plane probability volumes, and the one type that says how it is done.

:class:`FusionSettings` is the contract between stage 10, which chooses the settings and exports
them as ``fusion.json`` beside its models, and ``strokeseg predict`` (and so the Docker image), which
applies them: rule, threshold, plane weights, post-processing (minimum lesion size, largest component
only), connectivity and flip TTA. Its
defaults and checks live here and nowhere else.

Inputs are float32 probability volumes ``[x, y, z]`` of one subject, one per plane (keys are
plane names; any number of planes ≥ 1, all of one shape). Rules (:data:`FUSION_RULES`):

- ``mean`` (default, upstream's, docs/upstream-raxnet.md §11.2): the plain average of the
  planes' probabilities, lesion where ``mean ≥ threshold`` (upstream's code uses ≥; its README
  says >). This is soft averaging, not a vote, although the preprint calls it majority voting.
- ``majority``: hard voting, lesion where more than half of the planes have
  ``probability > threshold`` (2 of 3; each plane's own binary mask uses the strict > that the
  single-plane evaluations use).
- ``weighted_mean``: ``Σ w·p / Σ w ≥ threshold`` with one non-negative weight per plane.

The mean is accumulated in float32 in the dict's order (axial, sagittal, coronal from
:data:`strokeseg.config.PLANES`), so ``(a + s + c) / 3`` is rounded exactly as upstream's NumPy
sum of float32 arrays. Small components are removed afterwards, and with ``largest_component`` all
but the largest, by :mod:`strokeseg.infer.postprocessing`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from strokeseg.config import PLANES
from strokeseg.errors import ConfigError, InputError
from strokeseg.infer.postprocessing import postprocess

FUSION_RULES = ("mean", "majority", "weighted_mean")
CONNECTIVITIES = (6, 18, 26)
# fusion.json keys of the settings; the file may hold provenance besides (models, sources, ...).
JSON_KEYS = {"rule": "fusion", "threshold": "threshold", "weights": "weights",
             "min_lesion_voxels": "min_lesion_voxels", "largest_component": "largest_component",
             "connectivity": "connectivity", "flip_tta": "flip_tta"}


@dataclass(frozen=True)
class FusionSettings:
    """How per-plane probabilities become one mask (module docstring). Invalid values raise
    :class:`strokeseg.errors.ConfigError` naming the setting."""
    rule: str = "mean"
    threshold: float = 0.5
    weights: Mapping[str, float] | None = None      # weighted_mean only: one weight per plane
    min_lesion_voxels: int = 0                      # components smaller than this are removed; 0 keeps all
    largest_component: bool = False                 # then only the largest component is kept
    connectivity: int = 6                           # ATLAS's lesion-counting rule
    flip_tta: bool = False                          # left-right flip test-time augmentation

    def __post_init__(self):
        if self.rule not in FUSION_RULES:
            raise ConfigError(f"fusion rule {self.rule!r} is not one of {FUSION_RULES}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"fusion threshold must be in [0, 1], got {self.threshold!r}")
        size = self.min_lesion_voxels
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ConfigError(f"min_lesion_voxels must be a whole number >= 0, got {size!r}")
        if self.connectivity not in CONNECTIVITIES:
            raise ConfigError(f"connectivity must be one of {CONNECTIVITIES}, got {self.connectivity!r}")
        for name in ("largest_component", "flip_tta"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "min_lesion_voxels", int(size))
        object.__setattr__(self, "weights", self._checked_weights())

    def _checked_weights(self) -> dict[str, float] | None:
        if self.rule != "weighted_mean":
            if self.weights is not None:
                raise ConfigError(f"weights are only used by the weighted_mean rule, not by {self.rule!r}")
            return None
        if not isinstance(self.weights, Mapping) or set(self.weights) != set(PLANES):
            raise ConfigError(f"the weighted_mean rule needs one weight per plane ({', '.join(PLANES)}), "
                              f"got {self.weights!r}")
        try:
            weights = {plane: float(self.weights[plane]) for plane in PLANES}
        except (TypeError, ValueError):
            raise ConfigError(f"weighted_mean weights must be numbers, got {dict(self.weights)}") from None
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"weighted_mean weights must be finite, >= 0 and not all 0, got {weights}")
        return weights

    def replace(self, **changes) -> "FusionSettings":
        """A checked copy with the given fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_record(self) -> dict:
        """The settings as ``fusion.json`` keys (``fusion`` is the rule)."""
        return {key: getattr(self, field) for field, key in JSON_KEYS.items()}

    def to_json(self, **provenance) -> str:
        """``fusion.json``: the settings plus any provenance keys (ignored by :meth:`from_json`)."""
        clash = sorted(set(provenance) & set(JSON_KEYS.values()))
        if clash:
            raise ValueError(f"provenance keys clash with settings: {clash}")
        return json.dumps({**self.to_record(), **provenance}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_record(cls, record: Mapping) -> "FusionSettings":
        """Settings from a ``fusion.json`` object: absent or null keys take the defaults."""
        values = {field: record[key] for field, key in JSON_KEYS.items() if record.get(key) is not None}
        return cls(**values)

    @classmethod
    def from_json(cls, path: Path) -> "FusionSettings":
        """Settings from a ``fusion.json`` file; any fault is an :class:`InputError` naming the file."""
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"unreadable fusion settings ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(record, dict):
            raise InputError(path, "fusion settings are not a JSON object")
        try:
            return cls.from_record(record)
        except ConfigError as exc:
            key = cls._faulty_key(record)
            text = str(exc)
            raise InputError(path, text if key in text else f"{key}: {text}") from None

    @classmethod
    def _faulty_key(cls, record: Mapping) -> str:
        """The ``fusion.json`` key whose value is at fault: the first that fails on its own (weights with
        the file's rule), else the rule and weights together."""
        rule_key, weights_key = JSON_KEYS["rule"], JSON_KEYS["weights"]
        rule = record.get(rule_key)
        if rule is not None and not (isinstance(rule, str) and rule in FUSION_RULES):
            return rule_key
        for key in JSON_KEYS.values():
            if key == rule_key or record.get(key) is None:
                continue
            alone = {key: record[key]}
            if key == weights_key and rule is not None:
                alone[rule_key] = rule
            try:
                cls.from_record(alone)
            except ConfigError:
                return key
        return f"{JSON_KEYS['rule']}/{JSON_KEYS['weights']}"

    def describe(self) -> str:
        """The rule in words, for figure titles and logs."""
        text = {"mean": f"mean probability ≥ {self.threshold:g}",
                "majority": f"≥ 2 of 3 planes with p > {self.threshold:g}",
                "weighted_mean": f"weighted mean ≥ {self.threshold:g}"}[self.rule]
        if self.min_lesion_voxels > 1:
            text += f", lesions ≥ {self.min_lesion_voxels} voxels"
        if self.largest_component:
            text += ", largest lesion only"
        return text + (", flip TTA" if self.flip_tta else "")


# ------------------------------------------------------------------------------------ fusion
def _check_probabilities(probabilities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not probabilities:
        raise ValueError("fusion needs at least one probability volume")
    arrays = {name: np.asarray(p) for name, p in probabilities.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"probability volumes differ in shape: {shapes}")
    return arrays


def _plane_weights(names, settings: FusionSettings) -> dict[str, float]:
    if settings.rule != "weighted_mean":
        return {name: 1.0 for name in names}
    missing = [name for name in names if name not in settings.weights]
    if missing:
        raise ValueError(f"weighted_mean: no weight for {', '.join(missing)}")
    return {name: settings.weights[name] for name in names}


def fused_probability(probabilities: dict[str, np.ndarray], settings: FusionSettings = FusionSettings()) -> np.ndarray:
    """The fused float32 probability map: the weighted mean for ``weighted_mean``, else the plain
    mean (also for ``majority``, whose mask comes from votes; the map is what is saved)."""
    arrays = _check_probabilities(probabilities)
    weights = _plane_weights(list(arrays), settings)
    total = np.float32(sum(weights.values()))
    out = np.zeros(next(iter(arrays.values())).shape, dtype=np.float32)
    for name, weight in weights.items():
        if weight == 1.0:
            out += arrays[name]                          # upstream's plain float32 sum
        elif weight != 0.0:
            out += np.float32(weight) * np.asarray(arrays[name], dtype=np.float32)
    out /= total
    return out


def fuse(probabilities: dict[str, np.ndarray], settings: FusionSettings = FusionSettings()) -> np.ndarray:
    """uint8 {0, 1} lesion mask from the planes' probabilities under the settings' rule and
    threshold, before any component removal (module docstring)."""
    arrays = _check_probabilities(probabilities)
    threshold = np.float32(settings.threshold)
    if settings.rule == "majority":
        votes = np.zeros(next(iter(arrays.values())).shape, dtype=np.uint8)
        for p in arrays.values():
            votes += p > threshold
        return (2 * votes.astype(np.uint16) > len(arrays)).astype(np.uint8)
    return (fused_probability(arrays, settings) >= threshold).astype(np.uint8)


def fused_mask(probabilities: dict[str, np.ndarray], settings: FusionSettings = FusionSettings()) -> np.ndarray:
    """:func:`fuse`, then the removal of components smaller than ``settings.min_lesion_voxels`` and, with
    ``settings.largest_component``, of all but the largest."""
    mask = fuse(probabilities, settings)
    if settings.min_lesion_voxels > 1 or settings.largest_component:
        return postprocess(mask, settings.min_lesion_voxels, settings.largest_component, settings.connectivity)
    return mask

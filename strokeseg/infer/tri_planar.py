"""One object that turns a volume on the model grid into per-plane probabilities and a fused mask.

:class:`TriPlanarPredictor` carries what every tri-planar prediction needs together: each plane's
predictor, the normalisation the models were trained with, the fusion settings and the batch size.
Stage 10 (hold-out and cross-validation volumes) and ``strokeseg predict`` use it, so both
normalise, predict, fuse and clean up in exactly one way. A 3-D model is the predictor's one
``volume`` "plane": the normalised volume goes through Gaussian-weighted sliding windows
(:mod:`strokeseg.infer.sliding_window`), with left–right mirroring for flip TTA.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from strokeseg.config import VOLUME, ConvertConfig
from strokeseg.infer import fusion
from strokeseg.infer.fusion import FusionSettings
from strokeseg.infer.inference import T1, PlanePredictor, check_batch_size, normalized_volume, plane_probability
from strokeseg.infer.sliding_window import sliding_window_probability


@dataclass(frozen=True)
class TriPlanarPredictor:
    predictors: dict[str, PlanePredictor]           # plane -> predictor (one model or a fold ensemble)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    settings: FusionSettings = field(default_factory=FusionSettings)
    batch_size: int = 8
    skip_empty: bool = True                         # one model call for all slices outside the head
    kinds: tuple[str, ...] = T1                     # one normalisation kind per image channel
    window_step: float = 0.5                        # 3-D models: sliding-window step, a fraction of the patch
    window_batch: int = 2                           # 3-D models: windows per model call (a patch is large)
    crop_to_head: bool = True                       # fully convolutional models see the head's window only

    def __post_init__(self):
        if not self.predictors:
            raise ValueError("a tri-planar predictor needs at least one plane")
        check_batch_size(self.batch_size)
        check_batch_size(self.window_batch)
        for plane, predictor in self.predictors.items():
            if plane == VOLUME and predictor.channels != len(self.kinds):
                raise ValueError(f"the 3-D model reads {predictor.channels} image channels, the cohort has "
                                 f"{len(self.kinds)}")
            if predictor.channels % len(self.kinds):
                raise ValueError(f"the {plane} model reads {predictor.channels} input channels, not a multiple "
                                 f"of the {len(self.kinds)} image channels")

    def with_settings(self, settings: FusionSettings) -> "TriPlanarPredictor":
        return dataclasses.replace(self, settings=settings)

    def plane_probability(self, plane: str, volume: np.ndarray, normalized: np.ndarray | None = None,
                          affine: np.ndarray | None = None) -> np.ndarray:
        """float32 probability volume of one plane (``normalized``: the volume already normalised);
        ``volume`` is one channel (x, y, z) or the image channels stacked (m, x, y, z), on the grid of
        ``affine`` (the plan grid's: the normalisation's head region depends on it)."""
        predictor = self.predictors[plane]
        if plane == VOLUME:
            if normalized is None:
                normalized = normalized_volume(volume, self.convert, self.kinds, affine)
            if normalized is None:
                raise ValueError("3-D models need a per-volume normalisation, not convert.normalization=slice_max")
            return sliding_window_probability(predictor.predict, normalized, predictor.patch, self.window_batch,
                                              self.window_step, mirror_axes=(0,) if self.settings.flip_tta else ())
        return plane_probability(predictor.predict, volume, plane, self.convert, predictor.channels // len(self.kinds),
                                 self.batch_size, flip_tta=self.settings.flip_tta, normalized=normalized,
                                 skip_empty=self.skip_empty, kinds=self.kinds, affine=affine,
                                 crop_to_head=self.crop_to_head and predictor.fully_convolutional)

    def probabilities(self, volume: np.ndarray, affine: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per plane, the float32 probability volume of ``volume`` (normalised once for all planes;
        ``affine``: the volume's plan grid, as stage 03 normalised the training volumes on it)."""
        normalized = normalized_volume(volume, self.convert, self.kinds, affine)
        return {plane: self.plane_probability(plane, volume, normalized) for plane in self.predictors}

    def mask(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        """The fused uint8 mask, post-processed as the settings say (small components, largest only)."""
        return fusion.fused_mask(probabilities, self.settings)

    def fused_probability(self, probabilities: dict[str, np.ndarray]) -> np.ndarray:
        return fusion.fused_probability(probabilities, self.settings)

"""Training-time augmentation of 2-D batches: geometry applied identically to image and mask, then
intensity changes of the image alone (upstream had neither, §14.14).

Geometry (:class:`Augmentation`, ``training.augment``), per slice: a left–right flip with
probability ``flip_probability`` (only along the canvas axis that is the volume's x; sagittal slices
are never flipped, a front–back mirror is not anatomy), then one rotation by up to
``±max_rotation_degrees`` and one isotropic zoom by a factor in ``[1 − max_scaling, 1 + max_scaling]``
about the canvas centre. The image is resampled bilinearly, the mask with nearest neighbour so it
stays binary; what comes from outside the canvas is 0.

Intensity (:class:`SliceIntensity`, ``training.intensity_augment``): nnU-Net's noise, blur,
brightness, contrast, low-resolution and gamma transforms
(:mod:`strokeseg.train.intensity_augmentation`, NumPy inside ``tf.numpy_function``), after the
geometry as nnU-Net orders them; masks pass through untouched. Slot b of a batch draws from the
seed words (epoch seed, batch position, b); a slice's adjacent slices share the draws of their
image channel. :func:`batch_augmentation` builds what a run's settings ask for: either, both, or
none.

Every draw is stateless: it depends only on ``(seed, epoch, batch position)``, so a resumed run
augments exactly as the uninterrupted one would have, whatever the tf.data parallelism.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from strokeseg.data.planes import left_right_axis
from strokeseg.train.intensity_augmentation import IntensityAugmentation, augment_images

BatchAugment = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True)
class Augmentation:
    plane: str
    flip_probability: float = 0.5
    max_rotation_degrees: float = 10.0
    max_scaling: float = 0.1

    @classmethod
    def from_training(cls, plane: str, training) -> "Augmentation":
        return cls(plane, training.flip_probability, training.max_rotation_degrees, training.max_scaling)

    def __call__(self, images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Augment one batch: images (B, H, W, C) float32, masks (B, H, W, 1), seed an int64 pair."""
        batch = tf.shape(images)[0]
        draws = tf.random.stateless_uniform([batch, 3], seed=seed, dtype=tf.float32)
        axis = left_right_axis(self.plane)
        if axis is not None and self.flip_probability > 0:
            flip = draws[:, 0] < self.flip_probability
            images, masks = (_flip_where(t, flip, axis + 1) for t in (images, masks))
        if self.max_rotation_degrees > 0 or self.max_scaling > 0:
            angle = (2.0 * draws[:, 1] - 1.0) * (self.max_rotation_degrees * math.pi / 180.0)
            scale = 1.0 + (2.0 * draws[:, 2] - 1.0) * self.max_scaling
            transform = _rotation_zoom(angle, scale, tf.shape(images)[1], tf.shape(images)[2])
            images = _warp(images, transform, "BILINEAR")
            masks = _warp(masks, transform, "NEAREST")
        return images, masks


@dataclass(frozen=True)
class SliceIntensity:
    """The intensity step of a 2-D batch: input channel k belongs to image channel ``k % groups``
    (the prepared layout: C adjacent slices of each of M image channels, groups = M)."""
    intensity: IntensityAugmentation
    groups: int = 1

    def __call__(self, images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """images (B, H, W, C) float32 on 0..255, masks returned as they came, seed an int64 pair."""
        def run(x: np.ndarray, words: np.ndarray) -> np.ndarray:
            return augment_images(self.intensity, x, words, self.groups)

        out = tf.numpy_function(run, [images, seed], tf.float32)
        return tf.ensure_shape(out, images.shape), masks


@dataclass(frozen=True)
class Chain:
    """Batch augmentations applied in turn (geometry first, then intensity, as nnU-Net)."""
    steps: tuple[BatchAugment, ...]

    def __call__(self, images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for step in self.steps:
            images, masks = step(images, masks, seed)
        return images, masks


def batch_augmentation(plane: str, training, groups: int = 1) -> BatchAugment | None:
    """What ``training.augment`` (geometry) and ``training.intensity_augment`` (intensity, with
    ``groups`` image channels) ask for a run's training batches: one, both in turn, or None."""
    steps: list[BatchAugment] = []
    if training.augment:
        steps.append(Augmentation.from_training(plane, training))
    if training.intensity_augment:
        steps.append(SliceIntensity(IntensityAugmentation.from_training(training), groups))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Chain(tuple(steps))


def _flip_where(tensor: tf.Tensor, flip: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.where(flip[:, None, None, None], tf.reverse(tensor, axis=[axis]), tensor)


def _rotation_zoom(angle: tf.Tensor, scale: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Projective transforms (B, 8) mapping output pixels to input pixels: rotate by ``angle`` and
    zoom by ``scale`` about the centre (an output pixel at distance d reads the input at d / scale)."""
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # input (x, y) = R(angle)/scale · (output − centre) + centre; TF's order is a0 a1 a2 b0 b1 b2 c0 c1.
    a2 = cx - cos * cx + sin * cy
    b2 = cy - sin * cx - cos * cy
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)


def _warp(tensor: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tensor, transforms=transform, output_shape=tf.shape(tensor)[1:3],
        fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")
    return tf.ensure_shape(out, tensor.shape)

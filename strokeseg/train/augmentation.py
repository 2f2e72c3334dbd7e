"""Training-time augmentation applied identically to image and mask (upstream had none, §14.14).

Per slice: a left–right flip with probability ``flip_probability`` (only along the canvas axis that
is the volume's x; sagittal slices are never flipped, a front–back mirror is not anatomy), then one
rotation by up to ``±max_rotation_degrees`` and one isotropic zoom by a factor in
``[1 − max_scaling, 1 + max_scaling]`` about the canvas centre. The image is resampled bilinearly,
the mask with nearest neighbour so it stays binary; what comes from outside the canvas is 0.

Every draw is stateless: it depends only on ``(seed, epoch, batch position)``, so a resumed run
augments exactly as the uninterrupted one would have, whatever the tf.data parallelism.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from strokeseg.data.planes import left_right_axis


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

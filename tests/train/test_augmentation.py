"""Augmentation: identical on image and mask, anatomical flips only, masks stay binary, and every
draw is a pure function of its seed (so a resumed run augments as the uninterrupted one)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from strokeseg.train.augmentation import Augmentation


def batch(n=6, h=32, w=48):
    x = np.zeros((n, h, w, 2), np.float32)
    x[:, 4:12, 30:40] = 200.0
    return tf.constant(x), tf.constant((x[..., :1] > 0).astype(np.float32))


def run(aug, seed=(3, 4)):
    x, y = aug(*batch(), tf.constant(seed, tf.int64))
    return x.numpy(), y.numpy()


def test_flip_is_along_the_left_right_axis_and_never_on_sagittal_slices():
    x, y = batch()
    fx, fy = run(Augmentation("axial", 1.0, 0.0, 0.0))
    np.testing.assert_array_equal(fx, x.numpy()[:, ::-1])       # axial rows run along x (left-right)
    np.testing.assert_array_equal(fy, y.numpy()[:, ::-1])
    sx, _ = run(Augmentation("sagittal", 1.0, 0.0, 0.0))
    np.testing.assert_array_equal(sx, x.numpy())


def test_rotation_and_zoom_move_image_and_mask_together_and_keep_the_mask_binary():
    x, y = run(Augmentation("coronal", 0.5, 15.0, 0.1))
    assert set(np.unique(y)) <= {0.0, 1.0}
    inside = y[..., 0] > 0
    assert inside.any()
    # Where the mask is, the warped image is bright; far from it, dark (same transform on both).
    assert x[..., 0][inside].mean() > 150 and x[..., 0][~inside].mean() < 20
    assert not np.array_equal(y, batch()[1].numpy())


def test_draws_are_pure_functions_of_the_seed():
    aug = Augmentation("axial", 0.5, 10.0, 0.1)
    np.testing.assert_array_equal(run(aug, (1, 2))[0], run(aug, (1, 2))[0])
    assert not np.array_equal(run(aug, (1, 2))[0], run(aug, (1, 3))[0])


def test_no_augmentation_is_the_identity():
    x, y = batch()
    ax, ay = run(Augmentation("axial", 0.0, 0.0, 0.0))
    np.testing.assert_array_equal(ax, x.numpy())
    np.testing.assert_array_equal(ay, y.numpy())

"""Augmentation: identical on image and mask, anatomical flips only, masks stay binary, and every
draw is a pure function of its seed (so a resumed run augments as the uninterrupted one); the
intensity step changes images only, after the geometry, and only when asked for."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import tensorflow as tf

from strokeseg.config import TrainingConfig
from strokeseg.train.augmentation import Augmentation, Chain, SliceIntensity, batch_augmentation
from strokeseg.train.intensity_augmentation import TRANSFORMS, IntensityAugmentation


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


ALL_INTENSITY = IntensityAugmentation(**{f"{name}_probability": 1.0 for name in TRANSFORMS})


def smooth_batch(n=4, h=32, w=48):
    """Slices with varied intensities (a ramp inside the head), so every intensity transform shows."""
    x, y = batch(n, h, w)
    ramp = np.linspace(0.3, 1.0, w, dtype=np.float32)[None, None, :, None]
    return x * ramp, y


def test_the_intensity_step_changes_images_only_and_slot_b_draws_from_seed_position_b():
    x, y = smooth_batch()
    step = SliceIntensity(ALL_INTENSITY, groups=1)
    ax, ay = step(x, y, tf.constant([7, 2], tf.int64))
    assert ay is y                                                     # the mask is not touched
    assert ax.shape == x.shape and ax.dtype == tf.float32
    np.testing.assert_array_equal(ax.numpy()[3], ALL_INTENSITY(x.numpy()[3], (7, 2, 3), groups=1))
    assert not np.array_equal(ax.numpy(), x.numpy())
    np.testing.assert_array_equal(step(x, y, tf.constant([7, 2], tf.int64))[0].numpy(), ax.numpy())
    assert not np.array_equal(step(x, y, tf.constant([7, 3], tf.int64))[0].numpy(), ax.numpy())


def test_a_runs_settings_choose_geometry_intensity_both_or_none():
    training = TrainingConfig()
    assert batch_augmentation("axial", training) is None                      # paper: neither
    geometry = batch_augmentation("axial", replace(training, augment=True))
    assert geometry == Augmentation.from_training("axial", training)          # exactly as before
    intensity = batch_augmentation("axial", replace(training, intensity_augment=True), groups=2)
    assert intensity == SliceIntensity(IntensityAugmentation.from_training(training), 2)
    both = batch_augmentation("coronal", replace(training, augment=True, intensity_augment=True))
    assert both == Chain((Augmentation.from_training("coronal", training), SliceIntensity(IntensityAugmentation())))


def test_geometry_comes_first_and_the_mask_sees_only_the_geometry():
    x, y = smooth_batch()
    seed = tf.constant([4, 1], tf.int64)
    geometry = Augmentation("coronal", 0.5, 15.0, 0.1)
    gx, gy = geometry(x, y, seed)
    bx, by = Chain((geometry, SliceIntensity(ALL_INTENSITY)))(x, y, seed)
    np.testing.assert_array_equal(by.numpy(), gy.numpy())
    np.testing.assert_array_equal(bx.numpy(), SliceIntensity(ALL_INTENSITY)(gx, gy, seed)[0].numpy())

"""Intensity augmentation (nnU-Net's set): each transform does what it says alone and as often as its
probability says, never leaves 0..255 or the head, keeps contrast's range and gamma's statistics,
and is a pure function of its seed words in 2-D and 3-D."""
from __future__ import annotations

import numpy as np
import pytest

from strokeseg.config import TrainingConfig
from strokeseg.train.intensity_augmentation import (
    BLUR_P_PER_CHANNEL,
    LOW_RESOLUTION_P_PER_CHANNEL,
    TRANSFORMS,
    IntensityAugmentation,
    augment_images,
)

NONE = {f"{name}_probability": 0.0 for name in TRANSFORMS}
ALL = {f"{name}_probability": 1.0 for name in TRANSFORMS}
PER_CHANNEL = {"blur": BLUR_P_PER_CHANNEL, "low_resolution": LOW_RESOLUTION_P_PER_CHANNEL}


def only(name: str, probability: float = 1.0, **ranges) -> IntensityAugmentation:
    return IntensityAugmentation(**{**NONE, f"{name}_probability": probability, **ranges})


def head_image(shape=(24, 32), channels=1, peak=180.0) -> np.ndarray:
    """A smooth 'head' (an ellipse of values between ~40 and ``peak``) on a 0 background, (*shape, K)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = sum(g ** 2 for g in grid)
    ramp = sum((i + 1) * g for i, g in enumerate(grid))
    values = np.where(radius < 0.8, 40.0 + (peak - 40.0) * (0.5 + 0.5 * np.sin(3 * ramp)) , 0.0)
    return np.stack([values * (1 - 0.1 * k) for k in range(channels)], axis=-1).astype(np.float32)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_alone_changes_the_head_only_and_probability_zero_changes_nothing(name):
    image = head_image(channels=2)
    for seed in range(6):
        aug = only(name, low_resolution_zoom=(0.5, 0.8))
        out = aug(image, (seed, 1))
        drawn = getattr(aug.draw((seed, 1), groups=2, rank=2), name)
        applied = drawn is not None if name == "noise" else any(v is not None for v in drawn)
        assert applied == (not np.array_equal(out, image)), (name, seed)
        assert out.dtype == np.float32 and out.shape == image.shape
        np.testing.assert_array_equal(out[image == 0], 0.0)          # the background stays 0
        np.testing.assert_array_equal(only(name, 0.0)(image, (seed, 1)), image)
    # With probability 1 the transform is drawn for every sample (blur and low resolution then pick
    # each channel group with nnU-Net's 0.5): at least one of six seeds changes the image.
    assert any(not np.array_equal(only(name, low_resolution_zoom=(0.5, 0.8))(image, (s, 1)), image)
               for s in range(6))


@pytest.mark.parametrize("name, probability", [("noise", 0.1), ("blur", 0.2), ("brightness", 0.15),
                                               ("contrast", 0.15), ("low_resolution", 0.25),
                                               ("inverted_gamma", 0.1), ("gamma", 0.3)])
def test_a_transforms_probability_is_respected(name, probability):
    image, n = head_image((8, 8)), 400
    aug = only(name, probability, noise_variance=(0.05, 0.1), low_resolution_zoom=(0.5, 0.8))
    changed = np.mean([not np.array_equal(aug(image, (seed, 7)), image) for seed in range(n)])
    expected = probability * PER_CHANNEL.get(name, 1.0)          # one channel group
    assert abs(changed - expected) < 4 * np.sqrt(expected * (1 - expected) / n), (changed, expected)


@pytest.mark.parametrize("shape, channels", [((24, 32), 3), ((10, 12, 8), 2)])
def test_the_same_seed_words_give_the_same_output_and_other_words_another(shape, channels):
    image = head_image(shape, channels)
    aug = IntensityAugmentation(**ALL)
    first = aug(image, (5, 2, 3, 0))
    np.testing.assert_array_equal(first, aug(image, (5, 2, 3, 0)))
    for other in [(5, 2, 3, 1), (5, 2, 4, 0), (6, 2, 3, 0), (5, 2, 3)]:
        assert not np.array_equal(first, aug(image, other)), other
    default = IntensityAugmentation()
    np.testing.assert_array_equal(default(image, (9, 9)), default(image, (9, 9)))


def test_every_sample_draws_the_same_values_whatever_the_settings():
    """What a transform draws for a sample does not depend on which other transforms are on (so
    changing one probability does not reshuffle the others, and a resumed run draws as before)."""
    everything = IntensityAugmentation(**ALL)
    for seed in range(20):
        full = everything.draw((seed, 4), groups=2, rank=3)
        for name in TRANSFORMS:
            assert getattr(only(name).draw((seed, 4), groups=2, rank=3), name) == getattr(full, name)
        assert only("gamma").draw((seed, 4), 2, 3).noise_seed == full.noise_seed


def test_a_batch_is_augmented_slot_by_slot_from_its_words():
    images = np.stack([head_image(), head_image()[::-1]])
    aug = IntensityAugmentation(**ALL)
    out = augment_images(aug, images, (11, 3))
    np.testing.assert_array_equal(out[1], aug(images[1], (11, 3, 1)))
    assert not np.array_equal(out[0], aug(images[0], (11, 3, 1)))


def test_adjacent_slices_of_a_group_share_their_draws_and_groups_draw_their_own():
    slab = head_image(channels=1)
    image = np.concatenate([slab, slab, slab], axis=-1)                  # three identical adjacent slices
    aug = IntensityAugmentation(**{**ALL, "noise_probability": 0.0})     # noise differs per pixel anyway
    shared = aug(image, (2, 5), groups=1)
    np.testing.assert_array_equal(shared[..., 0], shared[..., 1])
    np.testing.assert_array_equal(shared[..., 0], shared[..., 2])
    separate = aug(image, (2, 5))                                         # every channel its own group
    assert not np.array_equal(separate[..., 0], separate[..., 1])
    with pytest.raises(ValueError, match="channel groups"):
        aug(image, (2, 5), groups=2)


def test_noise_is_in_units_of_the_foreground_and_every_transform_is_scale_free():
    """The same draw on an image scaled by 1/2 gives half the output: nnU-Net's settings mean the same
    on any intensity scale (noise relative to the foreground's standard deviation)."""
    image = head_image((20, 24), 2, peak=150.0)
    for seed in range(5):
        aug = IntensityAugmentation(**ALL, noise_variance=(0.05, 0.1))
        np.testing.assert_allclose(aug(image / 2, seed), aug(image, seed) / 2, rtol=1e-4, atol=1e-3)
    noise = only("noise", noise_variance=(0.1, 0.1))
    residual = (noise(image, 3) - image)[image[..., 0] > 0, 0]
    assert 0.09 < residual.std() / image[image[..., 0] > 0, 0].std() < 0.11


def test_contrast_keeps_the_range_of_the_head():
    image = head_image(channels=1)
    head = image > 0
    out = only("contrast", contrast_range=(1.5, 2.0))(image, 0)
    assert out[head].min() == image[head].min() and out[head].max() == image[head].max()
    assert (out[head] == image[head].max()).sum() > (image[head] == image[head].max()).sum()   # clipped there
    lowered = only("contrast", contrast_range=(0.5, 0.6))(image, 0)
    assert lowered[head].std() < 0.7 * image[head].std()


@pytest.mark.parametrize("name", ["gamma", "inverted_gamma"])
def test_gamma_keeps_the_heads_mean_and_standard_deviation(name):
    image = head_image((32, 32))
    head = image > 0
    for gamma_range in ((0.5, 0.6), (1.6, 2.0)):
        out = only(name, gamma_range=gamma_range)(image, 1)
        assert np.abs(out - image).max() > 5.0
        # float32 arithmetic: within 0.01 % of the mean and the standard deviation
        np.testing.assert_allclose(out[head].mean(), image[head].mean(), rtol=1e-4)
        np.testing.assert_allclose(out[head].std(), image[head].std(), rtol=1e-4)


def test_values_stay_within_0_and_255_and_the_background_at_0():
    image = head_image((16, 16, 16), 2, peak=255.0)
    aug = IntensityAugmentation(**ALL, brightness_range=(1.5, 2.0), noise_variance=(0.5, 1.0))
    for seed in range(5):
        out = aug(image, seed)
        assert out.min() >= 0.0 and out.max() <= 255.0 and out.max() == 255.0
        np.testing.assert_array_equal(out[image == 0], 0.0)


def test_brightness_contrast_and_gamma_factors_follow_nnunets_bgcontrast_rule():
    draws = np.array([only("brightness").draw(seed).brightness[0] for seed in range(400)])
    assert draws.min() >= 0.75 and draws.max() <= 1.25
    assert abs(np.mean(draws < 1.0) - 0.5) < 0.1                 # half below 1, half above
    above = [only("gamma", gamma_range=(1.2, 1.5)).draw(s).gamma[0] for s in range(50)]
    below = [only("contrast", contrast_range=(0.5, 0.8)).draw(s).contrast[0] for s in range(50)]
    assert min(above) >= 1.2 and max(above) <= 1.5 and min(below) >= 0.5 and max(below) <= 0.8


def test_settings_come_from_the_training_config_and_bad_ones_are_refused():
    aug = IntensityAugmentation.from_training(TrainingConfig())
    assert aug == IntensityAugmentation()
    assert aug.gamma_range == (0.7, 1.5) and aug.low_resolution_probability == 0.25
    for bad in ({"noise_probability": 1.5}, {"gamma_range": (0.0, 1.5)}, {"blur_sigma": (1.0, 0.5)},
                {"low_resolution_zoom": (0.5, 1.5)}, {"contrast_range": (0.75,)}):
        with pytest.raises(ValueError):
            IntensityAugmentation(**bad)

"""3-D augmentation: a pure function of its seed, one transform for image and mask, binary masks,
and flips that are exact index reversals."""
from __future__ import annotations

import numpy as np
import pytest

from strokeseg.train.augmentation3d import Augmentation3D, PatchAugmentation, Transform3D, apply, augment_batch
from strokeseg.train.intensity_augmentation import TRANSFORMS, IntensityAugmentation

PATCH = (16, 16, 16)


def blob_patch(channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A smooth off-centre ellipsoid (so flips and rotations move it) and its mask (image > 0.5)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in PATCH], indexing="ij"))
    centre = np.array([6.0, 9.0, 7.5])[:, None, None, None]
    radii = np.array([5.0, 4.0, 6.0])[:, None, None, None]
    image = np.exp(-(((grid - centre) / radii) ** 2).sum(axis=0)).astype(np.float32)
    images = np.stack([image * (m + 1) for m in range(channels)], axis=-1)
    return images, (image > 0.5).astype(np.uint8)


def test_the_same_seed_gives_the_same_output_and_another_seed_another():
    images, mask = blob_patch()
    augment = Augmentation3D()
    first, again = augment(images, mask, (4, 1, 2, 0)), augment(images, mask, (4, 1, 2, 0))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert augment.draw((4, 1, 2, 1)) != augment.draw((4, 1, 2, 0))
    assert augment.draw(5) != augment.draw((5, 0))     # SeedSequence's zero padding is kept apart


@pytest.mark.parametrize("seed", range(8))
def test_image_and_mask_move_together_and_masks_stay_binary(seed):
    images, mask = blob_patch()
    augment = Augmentation3D(flip_probability=0.5, max_rotation_degrees=15.0, max_scaling=0.1)
    out_images, out_mask = augment(images, mask[..., None], seed)
    assert out_images.dtype == np.float32 and out_images.shape == images.shape
    assert out_mask.dtype == np.uint8 and out_mask.shape == (*PATCH, 1)
    assert set(np.unique(out_mask)) <= {0, 1}
    # The mask was image > 0.5: it must stay close to the augmented image > 0.5, for each channel
    # moved by the same matrix. Nearest neighbour shifts the mask's boundary by up to half a voxel,
    # which on a ~300-voxel blob costs up to ~0.12 Dice, but never moves its centre that far.
    lesion = out_mask[..., 0] > 0
    for m, level in enumerate((0.5, 1.0)):
        thresholded = out_images[..., m] > level
        dice = 2 * np.sum(thresholded & lesion) / (thresholded.sum() + lesion.sum())
        shift = np.abs(np.argwhere(thresholded).mean(axis=0) - np.argwhere(lesion).mean(axis=0)).max()
        assert dice > 0.85 and shift < 0.5, (seed, m, dice, shift)


def test_the_warp_really_moves_the_patch():
    images, mask = blob_patch(1)
    transform = Transform3D((False, False, False), axis=2, angle=np.radians(15.0), scale=1.1)
    out_images, out_mask = apply(transform, images, mask)
    assert not np.array_equal(out_mask, mask)
    assert out_mask.sum() > mask.sum()          # a zoom by 1.1 enlarges the lesion by about 1.1^3
    assert np.abs(out_images - images).max() > 0.1


def test_flips_only_equal_np_flip_exactly():
    images, mask = blob_patch()
    flip_all = Augmentation3D(flip_probability=1.0, max_rotation_degrees=0.0, max_scaling=0.0)
    out_images, out_mask = flip_all(images, mask, 9)
    np.testing.assert_array_equal(out_images, np.flip(images, axis=(0, 1, 2)))
    np.testing.assert_array_equal(out_mask, np.flip(mask, axis=(0, 1, 2)))
    left_right = Augmentation3D(flip_probability=1.0, max_rotation_degrees=0.0, max_scaling=0.0, flip_axes=(0,))
    np.testing.assert_array_equal(left_right(images, mask, 9)[0], images[::-1])
    unchanged = Augmentation3D(flip_probability=0.0, max_rotation_degrees=0.0, max_scaling=0.0)
    np.testing.assert_array_equal(unchanged(images, mask, 9)[0], images)


def test_a_batch_is_augmented_slot_by_slot_from_seed_epoch_step():
    images, mask = blob_patch()
    batch_images = np.stack([images, images[::-1]])
    batch_masks = np.stack([mask, mask[::-1]])[..., None]
    augment = Augmentation3D()
    out_images, out_masks = augment_batch(augment, batch_images, batch_masks, seed=1, epoch=2, step=3)
    alone_images, alone_mask = augment(batch_images[1], batch_masks[1], (1, 2, 3, 1))
    np.testing.assert_array_equal(out_images[1], alone_images)
    np.testing.assert_array_equal(out_masks[1], alone_mask)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="flip_probability"):
        Augmentation3D(flip_probability=1.5)
    with pytest.raises(ValueError, match="max_scaling"):
        Augmentation3D(max_scaling=1.0)
    with pytest.raises(ValueError, match="flip_axes"):
        Augmentation3D(flip_axes=(3,))


def test_intensity_follows_the_geometry_from_the_same_words_and_never_touches_the_mask():
    images, mask = blob_patch()
    images = images * 100.0
    spatial = Augmentation3D()
    intensity = IntensityAugmentation(**{f"{name}_probability": 1.0 for name in TRANSFORMS})
    out_images, out_mask = PatchAugmentation(spatial, intensity)(images, mask, (4, 1, 2, 0))
    spatial_images, spatial_mask = spatial(images, mask, (4, 1, 2, 0))
    np.testing.assert_array_equal(out_mask, spatial_mask)
    np.testing.assert_array_equal(out_images, intensity(spatial_images, (4, 1, 2, 0)))
    assert not np.array_equal(out_images, spatial_images)
    alone_images, alone_mask = PatchAugmentation(None, intensity)(images, mask, 3)
    assert alone_mask is mask and not np.array_equal(alone_images, images)
    # Without intensity settings a patch is augmented exactly as by the geometry alone.
    np.testing.assert_array_equal(PatchAugmentation(spatial)(images, mask, 3)[0], spatial(images, mask, 3)[0])

"""Patch sampler: stateless in (seed, epoch, step), round(B / 3) lesion-centred slots first, uniform
slots inside the volume, and subjects without lesion fall back to uniform patches."""
from __future__ import annotations

import numpy as np
import pytest

from strokeseg.data.volume_stores import VolumeStore, write_volume_store
from strokeseg.train.patches import (
    batch_arrays,
    corner_range,
    forced_count,
    sample_batch,
    uniform_corner,
)

SHAPE = (20, 24, 18)
PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Five subjects: 0 and 3 without lesion; 1, 2, 4 with small lesions near different corners,
    so a uniform patch would often miss them."""
    rng = np.random.default_rng(1)
    lesions = {1: (0, 0, 0), 2: (19, 23, 17), 4: (10, 2, 16)}
    subjects = []
    for i in range(5):
        mask = np.zeros(SHAPE, np.uint8)
        if i in lesions:
            x, y, z = lesions[i]
            mask[max(x - 1, 0):x + 1, max(y - 1, 0):y + 1, max(z - 1, 0):z + 1] = 1
        images = rng.integers(0, 256, size=(1, *SHAPE), dtype=np.uint8)
        subjects.append((f"sub-{i}", images, mask))
    folder = tmp_path_factory.mktemp("patches") / "store"
    write_volume_store(folder, subjects, channels=["t1w"])
    return VolumeStore(folder)


@pytest.mark.parametrize("batch_size, forced", [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 2), (50, 17)])
def test_forced_share_is_a_third_rounded_half_up(batch_size, forced):
    assert forced_count(batch_size) == forced


def test_the_plan_is_stateless_in_seed_epoch_and_step(store):
    plan = sample_batch(store, [0, 1, 2, 3, 4], PATCH, 6, seed=11, epoch=2, step=5)
    assert sample_batch(store, [0, 1, 2, 3, 4], PATCH, 6, seed=11, epoch=2, step=5) == plan
    others = [sample_batch(store, [0, 1, 2, 3, 4], PATCH, 6, seed=s, epoch=e, step=t).draws
              for s, e, t in ((11, 2, 6), (11, 3, 5), (12, 2, 5))]
    assert all(other != plan.draws for other in others)


@pytest.mark.parametrize("batch_size", range(2, 8))
def test_forced_slots_come_first_and_hold_lesion(store, batch_size):
    for step in range(10):
        plan = sample_batch(store, [1, 2, 4], PATCH, batch_size, seed=3, epoch=0, step=step)
        assert plan.forced == round(batch_size / 3) and plan.centred == (True,) * plan.forced
        _, masks = batch_arrays(store, plan)
        assert masks.shape == (batch_size, *PATCH, 1) and masks.dtype == np.float32
        for slot in range(plan.forced):
            assert masks[slot].any(), (batch_size, step, slot)


def test_uniform_slots_lie_inside_the_volume(store):
    corners = np.array([corner for step in range(40)
                        for _, corner in sample_batch(store, [0, 3], PATCH, 4, seed=0, epoch=1, step=step)])
    assert corners.min() == 0
    assert np.all(corners <= np.array(SHAPE) - np.array(PATCH))
    # every allowed corner turns up along the short axis (z: 0..2), so the draw is not stuck
    assert set(corners[:, 2]) == {0, 1, 2}


def test_axes_smaller_than_the_patch_centre_the_volume():
    assert corner_range((20, 10, 11), (16, 16, 16)) == ((0, 4), (-3, -3), (-2, -2))
    assert uniform_corner(np.array([0.999999, 0.5, 0.0]), (20, 10, 11), (16, 16, 16)) == (4, -3, -2)


def test_subjects_without_lesion_fall_back_to_uniform_patches(store):
    plan = sample_batch(store, [0, 3], PATCH, 6, seed=5, epoch=0, step=0)
    assert plan.forced == 2 and plan.centred == (False, False)
    images, masks = batch_arrays(store, plan)
    assert images.shape == (6, *PATCH, 1) and not masks.any()
    assert set(plan.positions) <= {0, 3}


def test_subjects_are_drawn_with_replacement_from_the_list(store):
    positions = [p for step in range(30) for p in sample_batch(store, [1, 4], PATCH, 3, 0, 0, step).positions]
    assert set(positions) == {1, 4}
    with pytest.raises(ValueError, match="no subjects"):
        sample_batch(store, [], PATCH, 3, 0, 0, 0)

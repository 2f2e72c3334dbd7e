"""A 3-D run's data on the tiny cohort: stage 03's volume store holds the training subjects normalised
exactly as the slice stores, a run's roles are the slice runs' subjects, and its patch batches are a
function of (seed, epoch, step) with a third of each batch on a lesion."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from strokeseg.config import TrainingConfig
from strokeseg.data import planes
from strokeseg.data.stores import SliceStore
from strokeseg.data.volume_stores import VolumeStore
from strokeseg.protocol.splits import fold_parts
from strokeseg.train.augmentation3d import Augmentation3D, PatchAugmentation
from strokeseg.train.intensity_augmentation import IntensityAugmentation
from strokeseg.train.volume_data import FLIP_AXES, VolumeRunData, augmentation, default_patch, role_subjects


@pytest.mark.parametrize("shape, patch", [((197, 233, 189), (128, 128, 128)), ((112, 112, 73), (112, 112, 80)),
                                          ((20, 24, 18), (32, 32, 32)), ((16, 17, 1), (16, 32, 16))])
def test_the_default_patch_rounds_the_grid_up_to_16_and_caps_it_at_128(shape, patch):
    assert default_patch(shape) == patch


def test_stage_03_writes_the_volume_store_only_for_3d_models_with_the_slice_stores_values(
        volume_workdir, prepared_workdir):
    assert not (prepared_workdir / "03_convert" / "volume").exists()
    store = VolumeStore(volume_workdir / "03_convert" / "volume")
    trained = pd.read_csv(volume_workdir / "02_splitting" / "subjects_80.csv")
    assert store.subject_names == sorted(trained["subject_name"])
    axial = SliceStore(volume_workdir / "03_convert" / "axial")
    for position, name in enumerate(store.subject_names[:3]):
        images, mask = store.volume(position)
        assert images.shape == (1, *axial.geometry.volume_shape) and images.dtype == np.uint8
        rows = axial.rows([name] * axial.n_slices, np.arange(axial.n_slices))
        slices = planes.to_stack(images[0], "axial")
        np.testing.assert_array_equal(axial.canvas.crop(axial.images_at(rows)[..., 0]), slices)
        assert store.lesion_voxels(position) == int(mask.sum()) == int(axial.index.loc[
            axial.index["subject_name"] == name, "lesion_pixels"].sum())


def test_a_runs_roles_are_the_slice_runs_subjects():
    folds = pd.DataFrame({"subject_name": [f"s{i}" for i in range(9)], "fold": [1, 1, 1, 2, 2, 2, 3, 3, 3]})
    inner = {"s1", "s4", "s7"}
    roles = {role: role_subjects(folds, inner, 2, 3, role) for role in ("train", "inner_val", "test")}
    assert roles == {"train": ["s0", "s2", "s6", "s8"], "inner_val": ["s1", "s7"], "test": ["s3", "s4", "s5"]}
    assert set(fold_parts(2, 3)) == set(roles)


@pytest.fixture(scope="module")
def data(volume_workdir) -> VolumeRunData:
    store = volume_workdir / "03_convert" / "volume"
    names = VolumeStore(store).subject_names
    return VolumeRunData(store, tuple(names[:-2]), tuple(names[-2:]), (16, 16, 16), 6)


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset]


def test_patch_batches_are_a_function_of_seed_epoch_and_step(data):
    first = _batches(data.dataset("train", 3, seed=7, steps=2))
    again = _batches(data.dataset("train", 3, seed=7, steps=2))
    other_epoch = _batches(data.dataset("train", 4, seed=7, steps=2))
    assert len(first) == 2
    for (x, y), (x2, y2) in zip(first, again):
        assert x.shape == (6, 16, 16, 16, 1) and y.shape == (6, 16, 16, 16, 1)
        assert x.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    # Validation patches are the same every epoch.
    for a, b in zip(_batches(data.dataset("inner_val", 0, 7, 2)), _batches(data.dataset("inner_val", 9, 7, 2))):
        np.testing.assert_array_equal(a[0], b[0])


def test_a_third_of_each_batch_holds_lesion_and_deep_supervision_repeats_the_mask(data):
    for _, masks in _batches(data.dataset("train", 0, seed=1, steps=3)):
        assert all(masks[slot].any() for slot in range(2))            # round(6 / 3) = 2 forced slots
    x, y = next(iter(data.dataset("train", 0, seed=1, steps=1, outputs=4)))
    assert len(y) == 4 and all(np.array_equal(np.asarray(y[0]), np.asarray(t)) for t in y)


def test_a_runs_settings_choose_the_patch_augmentation():
    training = TrainingConfig()
    assert augmentation(training) is None
    spatial = Augmentation3D(training.flip_probability, training.max_rotation_degrees, training.max_scaling,
                             flip_axes=FLIP_AXES)
    assert augmentation(replace(training, augment=True)) == PatchAugmentation(spatial, None)
    assert augmentation(replace(training, intensity_augment=True)) == PatchAugmentation(None, IntensityAugmentation())
    assert augmentation(replace(training, augment=True, intensity_augment=True)) == PatchAugmentation(
        spatial, IntensityAugmentation())


def test_intensity_augmented_patch_batches_repeat_and_keep_their_masks(data):
    augment = augmentation(replace(TrainingConfig(), intensity_augment=True, brightness_probability=1.0))
    plain = _batches(data.dataset("train", 2, seed=7, steps=2))
    first = _batches(data.dataset("train", 2, seed=7, steps=2, augment=augment))
    again = _batches(data.dataset("train", 2, seed=7, steps=2, augment=augment))
    for (x, y), (x2, y2), (px, py) in zip(first, again, plain):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(y, py)                 # intensity only: the un-augmented masks
        assert 0 <= x.min() and x.max() <= 255 and not np.array_equal(x, px)

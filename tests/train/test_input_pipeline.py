import numpy as np
import pytest

from strokeseg.data.prepared import PreparedSplit, part_dir, write_prepared
from strokeseg.protocol.weighted_sampling import epoch_draw, pool_plan
from strokeseg.train.augmentation import SliceIntensity
from strokeseg.train.input_pipeline import batch_dataset
from strokeseg.train.intensity_augmentation import IntensityAugmentation


def batch_sums(split):
    return [float(split.batch(i)[0].astype(np.float64).sum()) for i in range(split.n_batches)]


def test_one_epoch_yields_every_batch_once_as_float32(prepared):  # noqa: F811
    _, _, root, _ = prepared
    split = PreparedSplit(root, "axial", test_fold=1, role="test", n_folds=2, channels=4)
    batches = list(batch_dataset(split, epoch=0, seed=3).as_numpy_iterator())
    assert len(batches) == split.n_batches
    x, y = batches[0]
    image_shape, mask_shape = split.batch_shape
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == image_shape and y.shape == mask_shape and x.shape[-1] == 4
    assert 0 <= x.min() and x.max() <= 255 and set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_allclose(sorted(float(b[0].sum()) for b in batches), sorted(batch_sums(split)))


def test_batch_order_changes_per_epoch_and_is_reproducible(prepared):  # noqa: F811
    _, _, root, _ = prepared
    split = PreparedSplit(root, "axial", test_fold=2, role="test", n_folds=2)
    reference = batch_sums(split)

    def order(epoch, fixed=False):
        return [reference.index(float(x.sum())) for x, _ in batch_dataset(split, epoch, 7, fixed).as_numpy_iterator()]

    assert sorted(order(0)) == list(range(split.n_batches))
    assert order(0) == order(0)
    assert order(0) != order(1) or split.n_batches < 3
    assert order(2, fixed=True) == list(range(split.n_batches))


def test_epoch_indices_cap_steps_and_wrap_to_whole_replica_groups():
    from strokeseg.train.input_pipeline import epoch_indices

    full = epoch_indices(7, epoch=2, seed=5)
    assert sorted(full) == list(range(7))
    assert list(epoch_indices(7, 2, 5, steps=2)) == list(full[:2])
    grouped = epoch_indices(7, 2, 5, replicas=3)                       # 7 -> 9: two batches reused
    assert len(grouped) == 9 and list(grouped[:7]) == list(full) and list(grouped[7:]) == list(full[:2])
    assert list(epoch_indices(7, 2, 5, steps=2, replicas=2)) == list(full[:4])
    assert list(epoch_indices(7, 0, 5, fixed_order=True)) == list(range(7))


def test_intensity_augmented_epochs_repeat_exactly_and_leave_the_masks_alone(prepared):  # noqa: F811
    _, _, root, _ = prepared
    split = PreparedSplit(root, "axial", test_fold=1, role="test", n_folds=2, channels=4)
    augment = SliceIntensity(IntensityAugmentation(brightness_probability=1.0, gamma_probability=1.0))

    def epoch(seed, augment=augment):
        return list(batch_dataset(split, epoch=2, seed=seed, augment=augment).as_numpy_iterator())

    plain, first, resumed = epoch(5, None), epoch(5), epoch(5)     # a resumed run rebuilds the same epoch
    assert len(first) == len(plain) == split.n_batches
    for (x, y), (x2, y2), (px, py) in zip(first, resumed, plain):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(y, py)                       # masks exactly the un-augmented ones
        assert x.shape == px.shape and 0 <= x.min() and x.max() <= 255
        assert not np.array_equal(x, px)


@pytest.fixture(scope="module")
def weighted_root(prepared, tmp_path_factory):
    """The ``prepared`` layout (two folds, one subject per part) with foreground-weighted plans of 4 slots."""
    store, plans, _, _ = prepared
    root = tmp_path_factory.mktemp("weighted")
    for (fold, part), plan in plans.items():
        index = store.index[store.index["subject_name"] == plan["subject_name"].iloc[0]]
        lesions = index[index["lesion_pixels"] > 0].rename(columns={"lesion_pixels": "sum_voxel"}).assign(slice_bin=0)
        normals = index[(index["lesion_pixels"] == 0) & (index["brain_pixels"] > 0)]
        weighted, _ = pool_plan(lesions, normals, n_bins=1, batch_size=4, floor=0.1)
        folder = part_dir(root, "axial", fold)
        folder.mkdir(parents=True, exist_ok=True)
        write_prepared(store, weighted, (1,), folder, part)
    return root


def test_a_weighted_training_epoch_draws_its_slots_by_seed_and_epoch(weighted_root, prepared):  # noqa: F811
    split = PreparedSplit(weighted_root, "axial", test_fold=1, role="test", n_folds=2)   # two parts
    weights = split.weights
    assert weights.shape == split.slots.shape == (split.n_batches, 4)
    np.testing.assert_allclose(weights.sum(), 2.0)                     # each part's weights sum to 1
    for b in (0, split.n_batches - 1):                                 # slots number the batches in order
        np.testing.assert_array_equal(split.slots_at(np.arange(4 * b, 4 * b + 4))[0], split.batch(b)[0])

    def epoch(number, **kwargs):
        return list(batch_dataset(split, number, seed=4, sample=True, **kwargs).as_numpy_iterator())

    drawn = epoch_draw(weights, split.n_batches, 4, epoch=1, seed=4)
    first = epoch(1)
    assert len(first) == split.n_batches
    for (x, y), slots in zip(first, drawn, strict=True):
        images, masks = split.slots_at(slots)
        np.testing.assert_array_equal(x, images.astype(np.float32))
        np.testing.assert_array_equal(y, masks.astype(np.float32))
    for (x, _), (x2, _) in zip(first, epoch(1)):                       # a resumed run redraws the same epoch
        np.testing.assert_array_equal(x, x2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, epoch(2)))
    assert len(epoch(1, steps=1, replicas=3)) == 3                       # cut and grouped as epoch_indices
    planned = list(batch_dataset(split, 0, 4, fixed_order=True).as_numpy_iterator())   # validation: as planned
    np.testing.assert_array_equal(planned[-1][0], split.batch(split.n_batches - 1)[0])
    assert PreparedSplit(prepared[2], "axial", 1, "test", 2).weights is None   # distribution plans

import numpy as np

from strokeseg.data.prepared import PreparedSplit
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

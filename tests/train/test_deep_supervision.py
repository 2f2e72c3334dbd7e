"""Deep-supervision loss (nnU-Net's weighting, nearest-neighbour targets) on the 3-D models' heads."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.models import attention_unet3d
from strokeseg.train.deep_supervision import (
    DeepSupervisionLoss,
    ScaleLoss,
    deep_supervision_weights,
    downsample_target,
)
from strokeseg.train.losses import DiceLoss, get_loss

PATCH = (16, 32, 48)


def _mask(shape, seed=0, fraction=0.3):
    return (np.random.default_rng(seed).random(shape) < fraction).astype("float32")


def _pyramid(mask, n, seed=1):
    """Random probability maps at 1/2**i of the mask's spatial size, full resolution first."""
    rng = np.random.default_rng(seed)
    batch, *spatial, channels = mask.shape
    return [rng.random((batch, *(s // 2 ** i for s in spatial), channels)).astype("float32") for i in range(n)]


def test_weights_are_nnunets():
    # 1, 1/2, 1/4, … with the lowest scale set to 0, normalised to sum 1
    assert deep_supervision_weights(1) == [1.0]
    np.testing.assert_allclose(deep_supervision_weights(2), [1.0, 0.0])
    np.testing.assert_allclose(deep_supervision_weights(3), [2 / 3, 1 / 3, 0.0])    # (1, 0.5, 0) / 1.5
    np.testing.assert_allclose(deep_supervision_weights(4), [4 / 7, 2 / 7, 1 / 7, 0.0])  # / 1.75
    np.testing.assert_allclose(deep_supervision_weights(5), [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="number of scales"):
            deep_supervision_weights(bad)


def test_targets_are_every_other_voxel():
    y = _mask((2, *PATCH, 1))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(downsample_target(y, 0)), y)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(downsample_target(y, 1)), y[:, ::2, ::2, ::2])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(downsample_target(y, 2)), y[:, ::4, ::4, ::4])
    two_d = _mask((2, 32, 48, 1))  # the same rule on slices
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(downsample_target(two_d, 1)), two_d[:, ::2, ::2])


@pytest.mark.parametrize("base", [DiceLoss(), "tversky_plus_focal"])
def test_loss_is_the_weighted_sum_of_the_base_loss_per_scale(base):
    y = _mask((2, *PATCH, 1))
    predictions = _pyramid(y, 3)
    loss = DeepSupervisionLoss(base, 3)
    base_loss = get_loss(base) if isinstance(base, str) else base
    terms = [float(base_loss(y[:, ::2 ** i, ::2 ** i, ::2 ** i], p)) for i, p in enumerate(predictions)]
    expected = 2 / 3 * terms[0] + 1 / 3 * terms[1]  # the lowest scale weighs 0
    assert float(loss(y, predictions)) == pytest.approx(expected, rel=1e-6)
    # and through the per-output losses that compile() takes
    per_output = [float(term(y, p)) for term, p in zip(loss.output_losses(), predictions)]
    np.testing.assert_allclose(per_output, terms, rtol=1e-6)
    # explicit weights (C.4's: main + 0.3·(1/2) + 0.4·(1/4)) are used as given
    upstream = DeepSupervisionLoss(base, 3, weights=[1.0, 0.3, 0.4])
    assert float(upstream(y, predictions)) == pytest.approx(terms[0] + 0.3 * terms[1] + 0.4 * terms[2], rel=1e-6)


def test_mismatches_are_clear_errors():
    y = _mask((1, *PATCH, 1))
    with pytest.raises(ValueError, match="list of 3 outputs"):
        DeepSupervisionLoss("dice", 3)(y, _pyramid(y, 2))
    with pytest.raises(ValueError, match=r"scale 1: .* \(8, 16, 24\), the model's output has \(16, 32, 48\)"):
        DeepSupervisionLoss("dice", 3)(y, [y, y, y])
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss("dice", 3, weights=[1.0, 0.5])


def test_serialisation_round_trip():
    y = _mask((2, *PATCH, 1))
    predictions = _pyramid(y, 4)
    for loss in (DeepSupervisionLoss(get_loss("tversky_plus_focal"), 4),
                 DeepSupervisionLoss("dice", 4, weights=[1.0, 0.3, 0.4, 0.6])):
        for copy in (DeepSupervisionLoss.from_config(loss.get_config()),
                     keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))):
            assert isinstance(copy, DeepSupervisionLoss) and copy.weights == loss.weights
            assert float(copy(y, predictions)) == pytest.approx(float(loss(y, predictions)), rel=1e-6)
    term = ScaleLoss(DiceLoss(), 2)
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert copy.name == "dice_scale2" and copy.scale == 2


def test_one_training_step_with_the_attention_model():
    """compile(loss=output_losses, loss_weights=weights) on the four heads: the step's loss is the
    DeepSupervisionLoss of the model's outputs, finite, and three steps lower it."""
    keras.utils.set_random_seed(0)
    model = attention_unet3d.build((*PATCH, 2), width=0.125, deep_supervision=True, dropout=0.0)
    loss = DeepSupervisionLoss("dice", len(model.outputs))
    # eager: tracing the 3-D training graph costs ~10 s on a CPU, three eager steps ~2 s
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss.output_losses(), loss_weights=loss.weights,
                  run_eagerly=True)
    x = np.random.default_rng(0).standard_normal((2, *PATCH, 2)).astype("float32")
    y = (x[..., :1] > 0.5).astype("float32")  # learnable from the input
    before = float(loss(y, model(x, training=True)))
    losses = [float(model.train_on_batch(x, (y,) * len(model.outputs), return_dict=True)["loss"])
              for _ in range(3)]
    assert np.all(np.isfinite(losses))
    assert losses[0] == pytest.approx(before, rel=1e-4)  # Keras' total is the wrapper's sum
    assert losses[-1] < losses[0]
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.trainable_weights)

"""Losses against hand computations on small arrays (strokeseg.train.losses)."""
from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

from strokeseg.train import losses as sl
from strokeseg.train import metrics as sm

# One batch of two 2x2 "slices", shape (2, 2, 2, 1); the first has lesion, the second none.
Y = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], np.float32)[..., None]
P = np.array([[[0.8, 0.6], [0.2, 0.0]], [[0.1, 0.0], [0.3, 0.0]]], np.float32)[..., None]
# batch sums: Σyp = 1.4, Σy = 2, Σp = 2.0, Σp² = 1.14 -> TP 1.4, FP 0.6, FN 0.6


def value(loss, y=Y, p=P):
    return float(loss(y, p))


def np_bce(y, p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_focal(y, p, alpha, gamma):
    p_t = y * p + (1 - y) * (1 - p)
    return np.mean((y * alpha + (1 - y) * (1 - alpha)) * (1 - p_t) ** gamma * np_bce(y, p))


def test_dice_and_squared_dice_by_hand():
    assert value(sl.get_loss("dice")) == pytest.approx(1 - 3.8 / 5.0)
    assert value(sl.get_loss("dice", smooth=0.0)) == pytest.approx(1 - 2.8 / 4.0)
    assert value(sl.get_loss("soft_dice_squared")) == pytest.approx(1 - 3.8 / (2 + 1.14 + 1))
    # per sample: (1 - 3.8/4.6) for the lesion slice, (1 - 1/1.4) for the empty one
    assert value(sl.DiceLoss(per_sample=True)) == pytest.approx(((1 - 3.8 / 4.6) + (1 - 1 / 1.4)) / 2)


def test_tversky_by_hand():
    # TI = (1.4 + 1) / (1.4 + 0.3*0.6 + 0.7*0.6 + 1) = 2.4 / 3.0
    assert value(sl.get_loss("tversky")) == pytest.approx(1 - 2.4 / 3.0)
    # FN weighs more than FP: the same miss costs more than the same false alarm
    miss = value(sl.TverskyLoss(), Y, P * Y * 0.5)
    alarm = value(sl.TverskyLoss(), 1 - Y, P * Y * 0.5 + (1 - Y))
    assert miss > 0 and alarm > 0


def test_binary_focal_matches_hand_formula_and_keras():
    expected = np_focal(Y, P, alpha=0.8, gamma=2.0)
    # upstream §8 per pixel: -[0.8 y (1-p)^2 log p + 0.2 (1-y) p^2 log(1-p)], averaged
    by_hand = -np.mean(0.8 * Y * (1 - P) ** 2 * np.log(np.clip(P, 1e-7, 1))
                       + 0.2 * (1 - Y) * P ** 2 * np.log(1 - P))
    assert expected == pytest.approx(by_hand, rel=1e-6)
    assert value(sl.get_loss("binary_focal")) == pytest.approx(expected, rel=1e-5)
    keras_focal = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.8, gamma=2.0)
    assert value(sl.get_loss("binary_focal")) == pytest.approx(float(keras_focal(Y, P)), rel=1e-5)


def test_tversky_plus_focal_is_upstream_sum():
    loss = sl.get_loss("tversky_plus_focal")
    assert loss.name == "tversky_plus_focal"
    assert value(loss) == pytest.approx((1 - 2.4 / 3.0) + np_focal(Y, P, 0.8, 2.0), rel=1e-5)


def test_canonical_focal_tversky_per_sample():
    # sample 1: TP 1.4, FP 0.2, FN 0.6 -> TI = 2.4 / (1.4 + 0.05 + 0.51 + 1); sample 2: TP 0, FP 0.4
    ti1 = 2.4 / (1.4 + 0.25 * 0.2 + 0.85 * 0.6 + 1)
    ti2 = 1.0 / (0.25 * 0.4 + 1)
    assert value(sl.get_loss("focal_tversky")) == pytest.approx(((1 - ti1) ** 2 + (1 - ti2) ** 2) / 2)
    assert value(sl.get_loss("focal_tversky"), Y, Y) == pytest.approx(0.0, abs=1e-7)


def test_bce_dice_and_dunet_mixing():
    assert value(sl.get_loss("bce_dice")) == pytest.approx(np.mean(np_bce(Y, P)) + 1 - 3.8 / 5.0, rel=1e-5)
    expected = np_focal(Y, P, alpha=0.48, gamma=1.1) - np.log(3.8 / (2 + 1.14 + 1))
    assert value(sl.get_loss("dunet_mixing")) == pytest.approx(expected, rel=1e-5)


def test_lcnn_segmentation_terms():
    # two-class softmax Dice with background = mean of the lesion (y, p) and background (1-y, 1-p)
    # per-sample Dice losses (MONAI, smooth 1e-5)
    def dice_loss(y, p, s=1e-5):
        axes = (1, 2, 3)
        return np.mean(1 - (2 * (y * p).sum(axes) + s) / (y.sum(axes) + p.sum(axes) + s))
    q = np.clip(P.astype(np.float64), 1 / (1 + np.exp(10)), 1 - 1 / (1 + np.exp(10)))  # logits in [-10, 10]
    dice = 0.5 * (dice_loss(Y, q) + dice_loss(1 - Y, 1 - q))
    ce = np_bce(Y, q)
    assert value(sl.get_loss("lcnn")) == pytest.approx(0.7 * dice + 0.3 * ce.mean(), rel=1e-5)
    w = np.where(Y > 0, 3.0, 0.5)
    p_t = np.where(Y > 0, q, 1 - q)
    focal = np.mean(w * (1 - p_t) ** 2 * ce)
    v2 = sl.get_loss("lcnn", version="v2", class_weights=(0.5, 3.0))
    assert value(v2) == pytest.approx(0.5 * dice + 0.2 * (w * ce).sum() / w.sum() + 0.3 * focal, rel=1e-5)
    assert np.isfinite(value(sl.get_loss("lcnn"), Y, np.where(Y > 0, np.nan, 0.0).astype(np.float32)))


def fake_alignment(original, aligned, params):
    return {"symmetry": 2.0, "regularisation": 10.0, "edge": 4.0}


def test_lcnn_alignment_term_and_warmup():
    loss = sl.LCNNLoss(alignment_fn=fake_alignment)
    # 0.05 * (1.0*2 + 0.1*10 + 0.5*4) = 0.25 at full weight, epoch 3 of a 10-epoch warm-up -> 0.075
    assert float(loss.alignment_term(None, None, None)) == pytest.approx(0.25)
    assert float(loss.alignment_term(None, None, None, epoch=3)) == pytest.approx(0.075)
    assert loss.alignment_weight_at(25) == pytest.approx(0.05)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss), safe_mode=True)
    assert clone.alignment_fn.endswith(":fake_alignment")
    assert float(clone.alignment_term(None, None, None)) == pytest.approx(0.25)   # resolved by import
    bad = sl.LCNNLoss(alignment_fn=lambda *a: {"symmetry": 1.0, "smoothness": 1.0})
    with pytest.raises(ValueError, match="smoothness"):
        bad.alignment_term(None, None, None)
    # 6 background and 2 lesion pixels: N/(K n_c) = (2/3, 2), mean 4/3 -> (0.5, 1.5)
    assert sl.inverse_frequency_weights(Y) == pytest.approx((0.5, 1.5))


@pytest.mark.parametrize("name", sorted(sl.LOSSES))
def test_float16_predictions_give_float32_losses(name):
    loss = sl.get_loss(name)
    out = loss(Y.astype(np.float16), P.astype(np.float16))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert float(out) == pytest.approx(value(loss), rel=2e-3, abs=1e-4)


@pytest.mark.parametrize("name", sorted(sl.LOSSES))
def test_serialisation_round_trip(name):
    loss = sl.get_loss(name)
    config = keras.saving.serialize_keras_object(loss)
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(clone) is type(loss) and clone.name == loss.name
    assert value(clone) == pytest.approx(value(loss), rel=1e-6)


def test_saved_model_reloads_in_safe_mode(tmp_path):
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss=sl.get_loss("tversky_plus_focal"), metrics=sm.training_metrics())
    model.fit(np.ones((2, 4, 4, 1)), np.ones((2, 4, 4, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.loss.name == "tversky_plus_focal"
    assert [type(t) for _, t in reloaded.loss.terms] == [sl.TverskyLoss, sl.BinaryFocalLoss]


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown loss 'focaltversky'"):
        sl.get_loss("focaltversky")


@pytest.mark.parametrize("module", [sl, sm])
def test_no_tensorflow_import(module):
    # keras.ops only, so the same code runs under KERAS_BACKEND=jax without TensorFlow
    assert "import tensorflow" not in inspect.getsource(module)


def test_lcnn_alignment_with_the_model_module():
    from strokeseg.models import lcnn

    rng = np.random.default_rng(1)
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    params = rng.normal(size=(2, 3, 3)).astype(np.float32) * 0.1
    loss = sl.get_loss("lcnn", alignment_options={"mirror_axis": "height"})   # default alignment_fn
    terms = lcnn.alignment_losses(x, x, params, mirror_axis="height")
    expected = 0.05 * sum(lcnn.ALIGNMENT_WEIGHTS[k] * float(v) for k, v in terms.items())
    assert float(loss.alignment_term(x, x, params)) == pytest.approx(expected, rel=1e-5)

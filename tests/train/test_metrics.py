"""Training metrics (Keras) and per-slice scores (NumPy) on hand-made arrays (strokeseg.train.metrics)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.train import metrics as sm

# Two batches of 2 "slices" of 2x3 pixels, shape (B, H, W, 1).
TRUTH_A = np.array([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]], np.float32)[..., None]
PRED_A = np.array([[[0.9, 0.2, 0.7], [0, 0, 0]], [[0, 0.6, 0], [0, 0, 0]]], np.float32)[..., None]
# batch A: TP 1, FP 2, FN 1
TRUTH_B = np.array([[[1, 1, 1], [1, 0, 0]], [[0, 0, 0], [0, 0, 1]]], np.float32)[..., None]
PRED_B = np.array([[[0.8, 0.8, 0.8], [0.5, 0, 0]], [[0, 0, 0], [0, 0, 0.99]]], np.float32)[..., None]
# batch B: TP 4, FP 0, FN 1 (p = 0.5 is not > 0.5)


def run(metric, *batches):
    metric.reset_state()
    for y, p in batches:
        metric.update_state(y, p)
    return float(metric.result())


# ------------------------------------------------------------------------------ NumPy, per slice
def test_confusion_counts_threshold():
    assert sm.confusion_counts(PRED_A, TRUTH_A) == (1, 2, 1)
    assert sm.confusion_counts(PRED_B, TRUTH_B) == (4, 0, 1)


def test_slice_scores_with_and_without_smoothing():
    assert sm.slice_scores(PRED_A, TRUTH_A) == pytest.approx(
        {"dice": 2 / 5, "precision": 1 / 3, "recall": 1 / 2})
    assert sm.slice_scores(PRED_A, TRUTH_A, smooth=1.0) == pytest.approx(
        {"dice": 3 / 6, "precision": 2 / 4, "recall": 2 / 3})
    normal = np.zeros((4, 4))
    fp3 = normal.copy()
    fp3[0, :3] = 1
    # upstream: a normal slice with n false-positive pixels scores Dice 1/(n+1), an empty one 1.0
    assert sm.dice_score(fp3, normal, smooth=1.0) == pytest.approx(1 / 4)
    assert sm.dice_score(fp3, normal) == 0.0
    assert sm.recall_score(fp3, normal, smooth=1.0) == 1.0 and sm.recall_score(fp3, normal) == 0.0
    assert sm.precision_score(normal, normal) == sm.dice_score(normal, normal, smooth=1.0) == 1.0
    with pytest.raises(ValueError, match="shape"):
        sm.slice_scores(normal, np.zeros((3, 3)))


def test_average_score():
    assert sm.average_score(0.6, 0.9, 0.3) == pytest.approx(0.6)
    np.testing.assert_allclose(sm.average_score([0.3, 1.0], [0.6, 1.0], [0.0, 1.0]), [0.3, 1.0])


# --------------------------------------------------------------------------------- Keras metrics
def test_epoch_sums_equal_metric_on_concatenation():
    both = (np.concatenate([TRUTH_A, TRUTH_B]), np.concatenate([PRED_A, PRED_B]))
    expected = sm.slice_scores(both[1], both[0])           # TP 5, FP 2, FN 2
    assert expected == pytest.approx({"dice": 10 / 14, "precision": 5 / 7, "recall": 5 / 7})
    for metric in (sm.DiceScore(), sm.PrecisionScore(), sm.RecallScore()):
        assert run(metric, (TRUTH_A, PRED_A), (TRUTH_B, PRED_B)) == pytest.approx(expected[metric.name])
        assert run(metric, both) == pytest.approx(expected[metric.name])


def test_smooth_one_is_mean_of_per_batch_upstream_values():
    # upstream per batch, +1: A -> dice 3/6, precision 2/4, recall 2/3; B -> 9/10, 5/5, 5/6
    expected = {"dice": (3 / 6 + 9 / 10) / 2, "precision": (2 / 4 + 1.0) / 2, "recall": (2 / 3 + 5 / 6) / 2}
    for metric in sm.training_metrics(smooth=1.0):
        assert run(metric, (TRUTH_A, PRED_A), (TRUTH_B, PRED_B)) == pytest.approx(expected[metric.name])


def test_empty_epoch_rule():
    zeros = np.zeros((2, 3, 3, 1), np.float32)
    for metric in sm.training_metrics():
        assert run(metric, (zeros, zeros + 0.1)) == 1.0          # no positives anywhere
    missed = zeros.copy()
    missed[0, 1, 1] = 1
    assert [run(m, (missed, zeros)) for m in sm.training_metrics()] == [0.0, 0.0, 0.0]


def test_keras_metric_agrees_with_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    y = (rng.random((3, 8, 8, 1)) > 0.7).astype(np.float32)
    p = rng.random((3, 8, 8, 1)).astype(np.float16)               # mixed-precision output
    expected = sm.slice_scores(p.astype(np.float32), y)
    for metric in sm.training_metrics():
        assert run(metric, (y, p)) == pytest.approx(expected[metric.name], rel=1e-6)


def test_metric_config_round_trip():
    metric = sm.DiceScore(smooth=1.0, threshold=0.4, name="dice_coef")
    config = keras.saving.serialize_keras_object(metric)
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(clone) is sm.DiceScore
    assert (clone.smooth, clone.threshold, clone.name) == (1.0, 0.4, "dice_coef")

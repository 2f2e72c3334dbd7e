"""Training metrics (Keras, keras.ops only) and per-slice scores (NumPy) on thresholded predictions.

A pixel is predicted lesion when ``p > threshold`` (0.5) and is lesion when ``y > 0.5``.
(Upstream rounded ``clip(y·p)`` with TensorFlow's round-half-to-even, so ``p = 0.5`` exactly is
negative there too; ``docs/upstream-raxnet.md`` §8.)

Two modes, chosen by ``smooth``:

- ``smooth=0`` (default): TP, FP and FN are summed over the whole epoch in state variables and
  the score is computed once from the sums — so accumulating two batches equals scoring their
  concatenation. Empty rule (:data:`strokeseg.evaluate.volume_metrics.EMPTY_RULE`): a zero denominator scores
  1.0 when prediction and truth are both empty, 0.0 otherwise (an epoch with no positives
  anywhere has Dice 1.0; predicting nothing when there is lesion has precision 0.0).
- ``smooth > 0``: upstream's numbers for like-for-like tables (§8, §8.1). Each batch gets
  ``(2TP + s)/(Σy + Σŷ + s)``, ``(TP + s)/(TP + FP + s)``, ``(TP + s)/(TP + FN + s)`` over the
  whole batch flattened, and the result is the unweighted mean of those per-batch values over
  the batches seen (what upstream's custom loop, and Keras 2's metric wrapper, reported), so a
  smaller last batch counts as much as a full one.

The per-slice NumPy functions give the §10.1 per-slice protocol (``smooth=1`` reproduces upstream)
and the README's "Average Score" = (Dice + Recall + Precision) / 3.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from strokeseg.evaluate.volume_metrics import average_score, scores_from_counts  # noqa: F401  (re-exported)


class _ThresholdedScore(keras.metrics.Metric):
    """Base: confusion counts of thresholded predictions, accumulated per epoch (see module doc)."""

    def __init__(self, smooth=0.0, threshold=0.5, name=None, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.smooth, self.threshold = float(smooth), float(threshold)
        # float32 sums: exact up to 2^24 pixels per count, ~1e-7 relative error beyond (harmless
        # for a ratio; float64 is not available on every backend).
        for var in ("tp", "fp", "fn", "score_sum", "batches"):
            setattr(self, var, self.add_variable(shape=(), initializer="zeros", name=var, dtype="float32"))

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(ops.greater(ops.cast(y_true, "float32"), 0.5), "float32")
        pred = ops.cast(ops.greater(ops.cast(y_pred, "float32"), self.threshold), "float32")
        if sample_weight is not None:  # weights multiply pixel counts (broadcast to the mask shape)
            weight = ops.broadcast_to(ops.cast(sample_weight, "float32"), ops.shape(truth))
        else:
            weight = 1.0
        tp = ops.sum(weight * truth * pred)
        fp = ops.sum(weight * pred) - tp
        fn = ops.sum(weight * truth) - tp
        if self.smooth:
            self.score_sum.assign_add(self._score(tp, fp, fn, self.smooth))
            self.batches.assign_add(1.0)
        else:
            self.tp.assign_add(tp)
            self.fp.assign_add(fp)
            self.fn.assign_add(fn)

    def result(self):
        if self.smooth:
            return ops.divide_no_nan(self.score_sum, self.batches)
        return self._score(self.tp, self.fp, self.fn, 0.0)

    @staticmethod
    def _ratio(numerator, denominator, tp, fp, fn, smooth):
        if smooth:
            return (numerator + smooth) / (denominator + smooth)
        # Empty rule: 0/0 is 1.0 if prediction and truth are both empty, else 0.0.
        both_empty = ops.cast(ops.equal(tp + fp + fn, 0.0), "float32")
        safe = numerator / ops.maximum(denominator, 1e-12)
        return ops.where(ops.greater(denominator, 0.0), safe, both_empty)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="strokeseg")
class DiceScore(_ThresholdedScore):
    """Dice ``2TP / (2TP + FP + FN)`` of thresholded predictions (upstream ``dice_coef`` with smooth=1)."""

    def __init__(self, smooth=0.0, threshold=0.5, name="dice", dtype="float32"):
        super().__init__(smooth=smooth, threshold=threshold, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, smooth):
        return self._ratio(2.0 * tp, 2.0 * tp + fp + fn, tp, fp, fn, smooth)


@keras.saving.register_keras_serializable(package="strokeseg")
class PrecisionScore(_ThresholdedScore):
    """Precision ``TP / (TP + FP)`` of thresholded predictions."""

    def __init__(self, smooth=0.0, threshold=0.5, name="precision", dtype="float32"):
        super().__init__(smooth=smooth, threshold=threshold, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, smooth):
        return self._ratio(tp, tp + fp, tp, fp, fn, smooth)


@keras.saving.register_keras_serializable(package="strokeseg")
class RecallScore(_ThresholdedScore):
    """Recall ``TP / (TP + FN)`` of thresholded predictions."""

    def __init__(self, smooth=0.0, threshold=0.5, name="recall", dtype="float32"):
        super().__init__(smooth=smooth, threshold=threshold, name=name, dtype=dtype)

    def _score(self, tp, fp, fn, smooth):
        return self._ratio(tp, tp + fn, tp, fp, fn, smooth)


def training_metrics(smooth=0.0, threshold=0.5) -> list[keras.metrics.Metric]:
    """``[DiceScore, PrecisionScore, RecallScore]`` with one smoothing mode, for ``model.compile``."""
    return [cls(smooth=smooth, threshold=threshold) for cls in (DiceScore, PrecisionScore, RecallScore)]


# ------------------------------------------------------------------------------ per-slice, NumPy
def confusion_counts(pred, truth, threshold=0.5) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` with ``pred > threshold`` and ``truth > 0.5`` (probabilities or 0/1 masks)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    p, t = pred > threshold, truth > 0.5
    tp = int(np.count_nonzero(p & t))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp


def slice_scores(pred, truth, smooth=0.0, threshold=0.5) -> dict[str, float]:
    """``{"dice", "precision", "recall"}`` of one slice (or any array); ``smooth=1`` is §10.1's."""
    return scores_from_counts(*confusion_counts(pred, truth, threshold), smooth=smooth)


def dice_score(pred, truth, smooth=0.0, threshold=0.5) -> float:
    return slice_scores(pred, truth, smooth, threshold)["dice"]


def precision_score(pred, truth, smooth=0.0, threshold=0.5) -> float:
    return slice_scores(pred, truth, smooth, threshold)["precision"]


def recall_score(pred, truth, smooth=0.0, threshold=0.5) -> float:
    return slice_scores(pred, truth, smooth, threshold)["recall"]

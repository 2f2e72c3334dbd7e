"""Segmentation losses, each named for what it computes, composable as weighted sums.

Every loss maps ``(y_true, y_pred) -> scalar``: ``y_true`` a binary mask, ``y_pred`` sigmoid
probabilities of the same shape (e.g. ``(B, H, W, 1)``). Work is done in float32 whatever the
model's compute dtype (mixed precision), and only ``keras.ops`` is used, so the same code runs on
the TensorFlow and JAX backends. All classes are Keras-serialisable (package ``strokeseg``), so
saved models reload in safe mode.

Sources (``docs/``):

- ``docs/upstream-raxnet.md`` §8 — RAX-Net's losses: soft sums over the WHOLE batch flattened, +1
  smoothing. Its "FocalTverskyLoss" is ``(1 − TI) + focal`` (§14 item 13), registered here as
  ``"tversky_plus_focal"``; the canonical focal-Tversky ``(1 − TI)^γ`` is ``"focal_tversky"``.
- §10 / §10.4 — X-Net: BCE + soft Dice (``"bce_dice"``); CLCI-Net: soft Dice with squared
  denominators (``"soft_dice_squared"``); D-UNet "Enhance Mixing Loss": class-balanced focal
  (α 0.48, γ 1.1) − log(soft Dice) (``"dunet_mixing"``). D-UNet's own ``Statistics.py`` uses
  batch-flattened sums, a squared-denominator Dice with +1 smoothing and pixel means for the
  focal term; we follow that (its committed file does not run, §10.4 note).
- ``docs/upstream-other-projects.md`` A.3/A.4 — LCNN: 0.7·Dice + 0.3·CE (v1); 0.5·Dice + 0.2·weighted CE
  + 0.3·focal (ver2); plus a warmed-up alignment term (``"lcnn"``, :class:`LCNNLoss`).

Tversky weights are named ``fp_weight`` / ``fn_weight`` (papers disagree on which of α/β is
which): ``TI = (TP + s) / (TP + fp_weight·FP + fn_weight·FN + s)``.

Sample weights are not meaningful for batch-level sums: these losses return the batch scalar and
Keras' per-sample weighting is therefore not applied.
"""
from __future__ import annotations

import importlib
from typing import Callable, Iterable

import keras
import numpy as np
from keras import ops

# Keras' default fuzz factor; clipping probabilities to [ε, 1 − ε] keeps log() finite.
EPSILON = 1e-7


def _float32(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def _sum(x, per_sample: bool):
    """Sum over everything (batch-level, as upstream) or over all but the batch axis."""
    if per_sample:
        return ops.sum(x, axis=tuple(range(1, len(x.shape))))
    return ops.sum(x)


def _soft_counts(y_true, y_pred, per_sample: bool):
    """Soft TP, FP, FN: ``TP = Σ y·p``, ``FP = Σ p − TP``, ``FN = Σ y − TP`` (§8)."""
    tp = _sum(y_true * y_pred, per_sample)
    return tp, _sum(y_pred, per_sample) - tp, _sum(y_true, per_sample) - tp


def _bce(y_true, y_pred):
    """Per-pixel binary cross-entropy on probabilities clipped to [ε, 1 − ε] (as Keras)."""
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))


class SegmentationLoss(keras.losses.Loss):
    """Base class: float32 inputs, a scalar from :meth:`compute`."""

    def __init__(self, name=None, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction, dtype="float32")

    def call(self, y_true, y_pred):
        # Cast here too: terms of a WeightedSum and direct calls bypass Loss.__call__'s conversion.
        return self.compute(*_float32(y_true, y_pred))

    def compute(self, y_true, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="strokeseg")
class DiceLoss(SegmentationLoss):
    """Soft Dice loss ``1 − (2Σyp + s) / (Σy + Σp + s)`` (upstream's DiceCoefLoss, §8).

    ``squared=True`` puts ``Σy² + Σp²`` in the denominator (CLCI-Net, D-UNet, §10.4);
    ``log=True`` returns ``−log(Dice)`` instead of ``1 − Dice`` (D-UNet's mixing term).
    Sums run over the whole batch unless ``per_sample`` (then the mean over samples).
    """

    def __init__(self, smooth=1.0, squared=False, log=False, per_sample=False,
                 name="dice", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.smooth, self.squared = float(smooth), bool(squared)
        self.log, self.per_sample = bool(log), bool(per_sample)

    def compute(self, y_true, y_pred):
        intersection = _sum(y_true * y_pred, self.per_sample)
        if self.squared:
            denominator = (_sum(ops.square(y_true), self.per_sample)
                           + _sum(ops.square(y_pred), self.per_sample))
        else:
            denominator = _sum(y_true, self.per_sample) + _sum(y_pred, self.per_sample)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        loss = -ops.log(ops.maximum(dice, EPSILON)) if self.log else 1.0 - dice
        return ops.mean(loss)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "squared": self.squared,
                "log": self.log, "per_sample": self.per_sample}


@keras.saving.register_keras_serializable(package="strokeseg")
class TverskyLoss(SegmentationLoss):
    """``1 − TI``, ``TI = (TP + s) / (TP + fp_weight·FP + fn_weight·FN + s)``.

    Defaults are upstream's (§8): 0.3 on FP, 0.7 on FN, +1 smoothing, batch-level sums.
    """

    def __init__(self, fp_weight=0.3, fn_weight=0.7, smooth=1.0, per_sample=False,
                 name="tversky", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.fp_weight, self.fn_weight = float(fp_weight), float(fn_weight)
        self.smooth, self.per_sample = float(smooth), bool(per_sample)

    def tversky_index(self, y_true, y_pred):
        tp, fp, fn = _soft_counts(y_true, y_pred, self.per_sample)
        return (tp + self.smooth) / (tp + self.fp_weight * fp + self.fn_weight * fn + self.smooth)

    def compute(self, y_true, y_pred):
        return ops.mean(1.0 - self.tversky_index(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "fp_weight": self.fp_weight, "fn_weight": self.fn_weight,
                "smooth": self.smooth, "per_sample": self.per_sample}


@keras.saving.register_keras_serializable(package="strokeseg")
class FocalTverskyLoss(TverskyLoss):
    """Canonical focal-Tversky (the Abraham & Khan form): mean over samples of
    ``(1 − TI)^gamma``, TI per sample with 0.25 on FP, 0.85 on FN, γ 2, +1 smoothing.

    Not upstream's "FocalTversky", which is :func:`tversky_plus_focal` (§14 item 13).
    """

    def __init__(self, fp_weight=0.25, fn_weight=0.85, gamma=2.0, smooth=1.0, per_sample=True,
                 name="focal_tversky", reduction="sum_over_batch_size"):
        super().__init__(fp_weight=fp_weight, fn_weight=fn_weight, smooth=smooth,
                         per_sample=per_sample, name=name, reduction=reduction)
        self.gamma = float(gamma)

    def compute(self, y_true, y_pred):
        # Clamp at 0: rounding can push TI a hair above 1, and a fractional power of a negative is NaN.
        return ops.mean(ops.power(ops.maximum(1.0 - self.tversky_index(y_true, y_pred), 0.0), self.gamma))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="strokeseg")
class BinaryFocalLoss(SegmentationLoss):
    """Pixel mean of ``w · (1 − p_t)^γ · BCE``, ``p_t = y·p + (1−y)(1−p)``.

    With ``class_balancing`` the weight is ``alpha`` on lesion pixels and ``1 − alpha`` on background
    (Keras ``BinaryFocalCrossentropy(apply_class_balancing=True)``, §8: α 0.8, γ 2); otherwise 1.
    """

    def __init__(self, alpha=0.8, gamma=2.0, class_balancing=True,
                 name="binary_focal", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.alpha, self.gamma, self.class_balancing = float(alpha), float(gamma), bool(class_balancing)

    def compute(self, y_true, y_pred):
        p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
        focal = ops.power(ops.maximum(1.0 - p_t, 0.0), self.gamma) * _bce(y_true, y_pred)
        if self.class_balancing:
            focal = (y_true * self.alpha + (1.0 - y_true) * (1.0 - self.alpha)) * focal
        return ops.mean(focal)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "class_balancing": self.class_balancing}


@keras.saving.register_keras_serializable(package="strokeseg")
class BinaryCrossentropyLoss(SegmentationLoss):
    """Pixel mean of binary cross-entropy (probabilities clipped to [1e-7, 1 − 1e-7])."""

    def __init__(self, name="binary_crossentropy", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def compute(self, y_true, y_pred):
        return ops.mean(_bce(y_true, y_pred))


@keras.saving.register_keras_serializable(package="strokeseg")
class WeightedSum(SegmentationLoss):
    """``Σ weight_i · loss_i(y_true, y_pred)``, itself a loss with a readable name.

    >>> WeightedSum([(1.0, TverskyLoss()), (1.0, BinaryFocalLoss())], name="tversky_plus_focal")
    """

    def __init__(self, terms: Iterable, name="weighted_sum", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.terms = [(float(weight), loss) for weight, loss in terms]
        if not self.terms:
            raise ValueError("WeightedSum needs at least one (weight, loss) term")

    def compute(self, y_true, y_pred):
        return sum(weight * loss(y_true, y_pred) for weight, loss in self.terms)

    def get_config(self):
        terms = [{"weight": w, "loss": keras.saving.serialize_keras_object(loss)} for w, loss in self.terms]
        return {**super().get_config(), "terms": terms}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["terms"] = [(t["weight"], keras.saving.deserialize_keras_object(t["loss"]))
                           for t in config["terms"]]
        return cls(**config)


# ----------------------------------------------------------------------------------------- LCNN
# Alignment sub-terms and their weights (A.4: alignment = 1.0·sym + 0.1·reg + 0.5·edge).
ALIGNMENT_TERM_WEIGHTS = {"symmetry": 1.0, "regularisation": 0.1, "edge": 0.5}
DEFAULT_ALIGNMENT_FN = "strokeseg.models.lcnn:alignment_losses"
# LCNN sanitised its logits to [−10, 10] before the loss (A.4); in probability space that is this clamp.
_LCNN_P_MIN = float(1.0 / (1.0 + np.exp(10.0)))


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _callable_path(target: str | Callable) -> str:
    """A ``"module:qualname"`` string for the config, so the loss serialises without pickling."""
    if isinstance(target, str):
        return target
    return f"{target.__module__}:{target.__qualname__}"


@keras.saving.register_keras_serializable(package="strokeseg")
class LCNNLoss(SegmentationLoss):
    """LCNN segmentation loss on a sigmoid output, plus the pieces of its alignment term.

    Segmentation part (what :meth:`call` returns):

    - ``version="v1"`` (A.4): ``0.7·Dice + 0.3·CE``;
    - ``version="v2"`` (A.3): ``0.5·Dice + 0.2·CE_w + 0.3·Focal_w`` (γ 2, α = class weights).

    LCNN used a two-class softmax; a sigmoid ``q`` is the same distribution ``[1 − q, q]``, so
    "Dice with background included" (MONAI, per sample, smooth 1e-5) is the mean of the lesion Dice
    loss on ``(y, q)`` and the background Dice loss on ``(1 − y, 1 − q)``. ``class_weights`` =
    ``(background, lesion)`` (LCNN: inverse pixel frequency, mean 1 — :func:`inverse_frequency_weights`);
    ``CE_w`` is the weight-normalised mean ``Σ w_y·ce / Σ w_y`` (PyTorch's rule), ``Focal_w`` the
    pixel mean of ``w_y·(1 − p_t)^γ·ce``. Probabilities are clamped to ``sigmoid(±10)`` (LCNN's logit
    clamp) and NaNs replaced.

    Alignment part: a ``(y_true, y_pred)`` loss never sees the aligned slices, so a custom train
    step adds it: ``loss(y, p) + loss.alignment_term(x, aligned, params, epoch)``.
    ``alignment_fn(original, aligned, params, **alignment_options) -> dict`` (a callable or a
    ``"module:name"`` string; default ``strokeseg.models.lcnn:alignment_losses``, imported on first
    use, never at module import) gives the sub-terms, combined with ``alignment_term_weights``
    (default 1.0 symmetry, 0.1 regularisation, 0.5 edge) and multiplied by ``alignment_weight``
    (0.05) warmed up linearly over ``warmup_epochs`` (10, epochs counted from 1).
    ``class_weights`` are used by v2 only.
    """

    def __init__(self, version="v1", class_weights=(1.0, 1.0), alignment_weight=0.05,
                 warmup_epochs=10, alignment_fn: str | Callable = DEFAULT_ALIGNMENT_FN,
                 alignment_term_weights=None, alignment_options=None,
                 name="lcnn", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        if version not in ("v1", "v2"):
            raise ValueError(f"LCNN loss version must be 'v1' or 'v2', got {version!r}")
        self.version = version
        self.class_weights = tuple(float(w) for w in class_weights)
        if len(self.class_weights) != 2:
            raise ValueError(f"class_weights must be (background, lesion), got {class_weights!r}")
        self.alignment_weight, self.warmup_epochs = float(alignment_weight), int(warmup_epochs)
        self.alignment_fn = _callable_path(alignment_fn)
        self.alignment_term_weights = dict(alignment_term_weights or ALIGNMENT_TERM_WEIGHTS)
        self.alignment_options = dict(alignment_options or {})  # e.g. {"mirror_axis": "height"}
        self._alignment_callable = alignment_fn if callable(alignment_fn) else None

    def compute(self, y_true, y_pred):
        q = ops.nan_to_num(y_pred, nan=0.5, posinf=1.0, neginf=0.0)
        q = ops.clip(q, _LCNN_P_MIN, 1.0 - _LCNN_P_MIN)
        dice = 0.5 * (_per_sample_dice_loss(y_true, q) + _per_sample_dice_loss(1.0 - y_true, 1.0 - q))
        ce = _bce(y_true, q)
        if self.version == "v1":
            return 0.7 * dice + 0.3 * ops.mean(ce)
        w_bg, w_lesion = self.class_weights
        w = y_true * w_lesion + (1.0 - y_true) * w_bg
        weighted_ce = ops.sum(w * ce) / ops.sum(w)
        p_t = y_true * q + (1.0 - y_true) * (1.0 - q)
        focal = ops.mean(w * ops.square(1.0 - p_t) * ce)
        return 0.5 * dice + 0.2 * weighted_ce + 0.3 * focal

    def alignment_weight_at(self, epoch: int | None = None) -> float:
        """``alignment_weight · min(epoch, warmup) / warmup`` (epochs from 1); full weight if None."""
        if epoch is None or self.warmup_epochs <= 0:
            return self.alignment_weight
        return self.alignment_weight * min(max(int(epoch), 0), self.warmup_epochs) / self.warmup_epochs

    def alignment_term(self, original, aligned, params, epoch: int | None = None):
        """The weighted, warmed-up alignment loss (scalar, float32) to add to :meth:`call`'s."""
        if self._alignment_callable is None:
            self._alignment_callable = _resolve(self.alignment_fn)
        terms = self._alignment_callable(original, aligned, params, **self.alignment_options)
        unknown = sorted(set(terms) - set(self.alignment_term_weights))
        if unknown:
            raise ValueError(f"alignment terms {unknown} have no weight; known: "
                             f"{sorted(self.alignment_term_weights)}")
        total = sum(self.alignment_term_weights[k] * ops.cast(v, "float32") for k, v in terms.items())
        return self.alignment_weight_at(epoch) * total

    def get_config(self):
        return {**super().get_config(), "version": self.version, "class_weights": list(self.class_weights),
                "alignment_weight": self.alignment_weight, "warmup_epochs": self.warmup_epochs,
                "alignment_fn": self.alignment_fn, "alignment_term_weights": self.alignment_term_weights,
                "alignment_options": self.alignment_options}


def _per_sample_dice_loss(y_true, y_pred, smooth=1e-5):
    """MONAI's DiceLoss for one channel: mean over samples of ``1 − (2Σyp + s)/(Σy + Σp + s)``."""
    intersection = _sum(y_true * y_pred, per_sample=True)
    denominator = _sum(y_true, per_sample=True) + _sum(y_pred, per_sample=True)
    return ops.mean(1.0 - (2.0 * intersection + smooth) / (denominator + smooth))


def inverse_frequency_weights(masks) -> tuple[float, float]:
    """LCNN class weights ``(background, lesion)``: ``w_c = N / (K·n_c)``, normalised to mean 1 (A.3)."""
    masks = np.asarray(masks) > 0
    counts = np.array([masks.size - np.count_nonzero(masks), np.count_nonzero(masks)], dtype=np.float64)
    if (counts == 0).any():
        raise ValueError("class weights need both lesion and background pixels in the sample")
    weights = counts.sum() / (2.0 * counts)
    weights /= weights.mean()
    return float(weights[0]), float(weights[1])


# ------------------------------------------------------------------------------------ registry
def tversky_plus_focal(fp_weight=0.3, fn_weight=0.7, smooth=1.0, alpha=0.8, gamma=2.0) -> WeightedSum:
    """Upstream's "FocalTverskyLoss" (§8): ``(1 − TI) + class-balanced focal``, batch-level, +1."""
    return WeightedSum([(1.0, TverskyLoss(fp_weight, fn_weight, smooth)),
                        (1.0, BinaryFocalLoss(alpha, gamma))], name="tversky_plus_focal")


def bce_dice(smooth=1.0) -> WeightedSum:
    """X-Net: pixel-mean BCE + soft Dice loss (batch-level, +1)."""
    return WeightedSum([(1.0, BinaryCrossentropyLoss()), (1.0, DiceLoss(smooth))], name="bce_dice")


def dunet_mixing(alpha=0.48, gamma=1.1, smooth=1.0) -> WeightedSum:
    """D-UNet "Enhance Mixing Loss": class-balanced focal (α 0.48, γ 1.1) − log(squared soft Dice)."""
    return WeightedSum([(1.0, BinaryFocalLoss(alpha, gamma)),
                        (1.0, DiceLoss(smooth, squared=True, log=True, name="neg_log_dice"))],
                       name="dunet_mixing")


LOSSES: dict[str, Callable[..., keras.losses.Loss]] = {
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "binary_focal": BinaryFocalLoss,
    "binary_crossentropy": BinaryCrossentropyLoss,
    "tversky_plus_focal": tversky_plus_focal,
    "focal_tversky": FocalTverskyLoss,
    "bce_dice": bce_dice,
    "soft_dice_squared": lambda smooth=1.0, per_sample=False: DiceLoss(
        smooth, squared=True, per_sample=per_sample, name="soft_dice_squared"),
    "dunet_mixing": dunet_mixing,
    "lcnn": LCNNLoss,
}


def get_loss(name: str, **options) -> keras.losses.Loss:
    """Build a registered loss by name; ``options`` go to its constructor or factory."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}") from None
    return factory(**options)

"""Deep supervision: one loss over a model's full-resolution and lower-scale probability maps.

A model built with ``deep_supervision=True`` (``strokeseg.models.unet3d``, ``attention_unet3d``)
returns ``[p_0, p_1, …, p_{n−1}]``: scale ``i`` is the map at 1/2**i of the input's resolution on
every spatial axis, scale 0 the full-resolution (inference) map. The loss is nnU-Net's
(``DeepSupervisionWrapper`` and the weights of its trainer):

- the target of scale ``i`` is the full-resolution mask downsampled by nearest neighbour, every
  2**i-th voxel: ``y[:, ::2**i, ::2**i, ::2**i]`` (masks stay binary; no interpolation);
- weights ``1/2**i``, the lowest scale's set to 0, normalised to sum 1: n = 4 gives
  [4/7, 2/7, 1/7, 0]; terms of weight 0 are not computed;
- ``total = Σ_i w_i · base_loss(target_i, p_i)`` with any loss of ``strokeseg.train.losses``.

The ISLES'22 project (docs/upstream-other-projects.md C.4) instead upsamples its auxiliary maps to
full size and adds them with weights 0.3 (1/2), 0.4 (1/4), 0.6 (1/8) to the main loss; pass
``weights=[1.0, 0.3, 0.4, 0.6]`` for its weighting (explicit weights are used as given, not
normalised; the targets are still downsampled).

Two ways to train with it:

- call it on ``(mask, [p_0, …, p_{n−1}])`` (a custom training step, or to evaluate);
- in ``model.fit``: Keras applies a compiled loss to each output separately, so compile with
  ``loss=ds.output_losses(), loss_weights=ds.weights`` and give the full-resolution mask once per
  output, ``y = (mask,) * n``; each per-output loss downsamples its own target. The total is the same.

All classes are Keras-serialisable (package ``strokeseg``). Only ``keras.ops`` and basic strided
indexing are used, so the code runs on the TensorFlow and JAX backends.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

from strokeseg.train.losses import get_loss


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights for ``n`` scales: ``1/2**i``, the last (lowest) set to 0, sum 1.

    ``n == 1`` is no deep supervision: ``[1.0]`` (the rule would leave nothing to normalise)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of scales must be an integer >= 1, got {n!r}")
    if n == 1:
        return [1.0]
    weights = [1.0 / 2 ** i for i in range(n)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(y_true, scale: int):
    """Nearest-neighbour downsampling by 2**scale on every spatial axis: every 2**scale-th voxel.

    ``y_true`` is (batch, *spatial, channels), so 2-D and 3-D masks both work."""
    if scale == 0:
        return y_true
    step = 2 ** scale
    spatial = len(y_true.shape) - 2
    return y_true[(slice(None),) + (slice(None, None, step),) * spatial + (slice(None),)]


def _spatial_shape(x) -> tuple:
    return tuple(x.shape[1:-1])


def _check_shapes(target, y_pred, scale: int) -> None:
    """Fail clearly when a head is not at 1/2**scale of the mask (statically known shapes only)."""
    expected, got = _spatial_shape(target), _spatial_shape(y_pred)
    if all(isinstance(s, int) for s in expected + got) and expected != got:
        raise ValueError(f"deep supervision scale {scale}: the mask downsampled by {2 ** scale} has spatial "
                         f"shape {expected}, the model's output has {got}")


def _as_loss(base_loss) -> keras.losses.Loss:
    """A loss instance, a registry name (``"dice"``) or a serialised loss config."""
    if isinstance(base_loss, str):
        return get_loss(base_loss)
    if isinstance(base_loss, dict):
        return keras.saving.deserialize_keras_object(base_loss)
    return base_loss


def _scale_term(base_loss, y_true, y_pred, scale: int):
    target = downsample_target(y_true, scale)
    _check_shapes(target, y_pred, scale)
    return base_loss(target, y_pred)


@keras.saving.register_keras_serializable(package="strokeseg")
class DeepSupervisionLoss(keras.losses.Loss):
    """``Σ_i w_i · base_loss(y[:, ::2**i, …], y_pred[i])`` over ``n_scales`` outputs (module docstring).

    ``y_true`` is the full-resolution mask, ``y_pred`` the list of the model's outputs, full
    resolution first. ``weights`` defaults to :func:`deep_supervision_weights`."""

    def __init__(self, base_loss, n_scales: int, weights: Sequence[float] | None = None,
                 name="deep_supervision", reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.base_loss = _as_loss(base_loss)
        self.n_scales = int(n_scales)
        self.weights = _weights(self.n_scales, weights)

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, (list, tuple)) or len(y_pred) != self.n_scales:
            raise ValueError(f"{self.name}: expected a list of {self.n_scales} outputs (full resolution "
                             f"first), got {type(y_pred).__name__} of length {_length(y_pred)}")
        terms = [w * _scale_term(self.base_loss, y_true, p, i)
                 for i, (w, p) in enumerate(zip(self.weights, y_pred)) if w != 0.0]
        return ops.sum(ops.stack(terms))

    def output_losses(self) -> list[keras.losses.Loss]:
        """One loss per output for ``compile(loss=…, loss_weights=self.weights)`` (module docstring)."""
        return [ScaleLoss(self.base_loss, i) for i in range(self.n_scales)]

    def get_config(self):
        return {**super().get_config(), "base_loss": keras.saving.serialize_keras_object(self.base_loss),
                "n_scales": self.n_scales, "weights": list(self.weights)}


@keras.saving.register_keras_serializable(package="strokeseg")
class ScaleLoss(keras.losses.Loss):
    """``base_loss`` on one output at 1/2**scale, its target downsampled from the full-resolution mask."""

    def __init__(self, base_loss, scale: int, name=None, reduction="sum_over_batch_size"):
        self.base_loss = _as_loss(base_loss)
        self.scale = int(scale)
        super().__init__(name=name or f"{self.base_loss.name}_scale{self.scale}", reduction=reduction,
                         dtype="float32")

    def call(self, y_true, y_pred):
        return _scale_term(self.base_loss, y_true, y_pred, self.scale)

    def get_config(self):
        return {**super().get_config(), "base_loss": keras.saving.serialize_keras_object(self.base_loss),
                "scale": self.scale}


def _weights(n_scales: int, weights) -> list[float]:
    if weights is None:
        return deep_supervision_weights(n_scales)
    weights = [float(w) for w in weights]
    if len(weights) != n_scales or any(w < 0 for w in weights) or not any(weights):
        raise ValueError(f"deep supervision weights must be {n_scales} non-negative numbers, not all 0; "
                         f"got {weights}")
    return weights


def _length(x) -> str:
    return str(len(x)) if isinstance(x, (list, tuple)) else "-"

"""Batch normalisation folded into the convolution before it, for inference.

At inference a batch-normalisation layer is a fixed per-channel affine map,
``(y - mean) / sqrt(variance + epsilon) * gamma + beta``. Where its input is a convolution's output
that nothing else reads, the map is folded into that convolution's kernel and bias: the same
function with one pass over the feature map fewer. On a 2-core CPU a full-width RAX-Net's forward
step on 8 axial canvases took 0.181 s folded against 0.203 s (README, Performance;
bench/predict_volume.py measures inference with it). The outputs are
the same up to float32 rounding (1e-4 on a probability in tests/infer/test_batchnorm_folding.py).

Only standard Keras layers are folded (Conv2D, SeparableConv2D's pointwise step, Conv2DTranspose,
each with a bias and no activation of its own, and channels-last batch normalisation); any model
without such a pair is returned as it is. The folded copy is for prediction only: it is never saved.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import keras


def _producer(layer):
    """The layer whose output is ``layer``'s only input, or None."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    return nodes[0].input_tensors[0]._keras_history.operation


def foldable_pairs(model: "keras.Model") -> dict[str, str]:
    """``{batch-normalisation layer name: convolution layer name}`` of the pairs that fold exactly."""
    from keras import activations, layers

    convolutions = (layers.Conv2D, layers.SeparableConv2D, layers.Conv2DTranspose)
    pairs = {}
    for layer in model.layers:
        if type(layer) is not layers.BatchNormalization or layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        source = _producer(layer)
        if (type(source) in convolutions and source.use_bias and source.activation is activations.linear
                and len(source._inbound_nodes) == 1 and len(source._outbound_nodes) == 1
                and source.data_format == "channels_last"):
            pairs[layer.name] = source.name
    return pairs


def _folded_weights(convolution, batchnorm) -> list[np.ndarray]:
    """The convolution's weights with ``batchnorm``'s affine map folded in (same order as
    ``get_weights``)."""
    def values(variable, present: bool = True, default: float = 0.0) -> np.ndarray:
        if not present:
            return np.full(batchnorm.moving_mean.shape, default)
        return np.asarray(variable.numpy(), dtype=np.float64)

    gamma = values(batchnorm.gamma, batchnorm.scale, 1.0)
    beta = values(batchnorm.beta, batchnorm.center)
    mean, variance = values(batchnorm.moving_mean), values(batchnorm.moving_variance)
    scale = gamma / np.sqrt(variance + batchnorm.epsilon)
    *kernels, bias = [np.asarray(w, dtype=np.float64) for w in convolution.get_weights()]
    if type(convolution).__name__ == "Conv2DTranspose":         # kernel (h, w, out, in)
        kernels[-1] = kernels[-1] * scale[None, None, :, None]
    else:                                                       # (h, w, in, out); separable: the pointwise one
        kernels[-1] = kernels[-1] * scale
    bias = (bias - mean) * scale + beta
    return [w.astype(np.float32) for w in (*kernels, bias)]


def fold_batch_norm(model: "keras.Model") -> "keras.Model":
    """A copy of ``model`` with every :func:`foldable_pairs` batch normalisation folded into its
    convolution (the normalisation layer becomes a pass-through); ``model`` itself when there is none."""
    import keras

    pairs = foldable_pairs(model)
    if not pairs:
        return model

    class PassThrough(keras.layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

    def clone(layer):
        if layer.name in pairs:
            return PassThrough(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    convolutions = {conv: bn for bn, conv in pairs.items()}
    for layer in model.layers:
        if layer.name in pairs or not layer.weights:
            continue
        target = folded.get_layer(layer.name)
        if layer.name in convolutions:
            target.set_weights(_folded_weights(layer, model.get_layer(convolutions[layer.name])))
        else:
            target.set_weights(layer.get_weights())
    return folded

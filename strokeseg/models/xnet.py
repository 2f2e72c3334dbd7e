"""X-Net (Qi et al., MICCAI 2019, arXiv 1907.07000), the baseline RAX-Net is compared with.

Spec: ``docs/upstream-raxnet.md`` §10 (table, column "X-Net (as used here)") and §10.4.

A five-stage U-shape (64-128-256-512-1024 channels). Every stage is an *x_block*: a 1×1
conv-BN-ReLU shortcut added to three depthwise-separable units (depthwise 3×3 without bias → BN →
ReLU → 1×1 conv → BN → ReLU). The bottleneck ends in the Feature Similarity Module (FSM): a 3×3
conv-BN-ReLU down to C/8, a dot-product non-local block on it (θ, φ, g are bias-free 1×1 convs to
C/16; the affinity θφᵀ is divided by the number of positions N, with no softmax; a bias-free 1×1
conv maps back to C/8 and is added to its input), a 3×3 conv-BN-ReLU back to C, and a residual add
of the FSM input. Each decoder stage upsamples ×2 (nearest), applies a 3×3 conv-BN-ReLU,
concatenates the encoder skip and runs an x_block. A 1×1 conv with a sigmoid gives the map.

All kernels except the head's carry L2 1e-5 and he_normal initialisation, as in the official code
(its sigmoid head has neither; we keep that). Canonical build: the official input 224×192×1 gives
15,117,646 parameters, the count the RAX-Net study and the X-Net README (15.1M) report; the count
does not depend on H and W, and C only changes the first stage's kernels.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from strokeseg.models import check_input_shape

CANONICAL_INPUT = (224, 192, 1)
CANONICAL_PARAMS = 15_117_646
SIZE_MULTIPLE = 16

STAGE_FILTERS = (64, 128, 256, 512, 1024)
WEIGHT_DECAY = 1e-5


@keras.saving.register_keras_serializable(package="strokeseg")
class SimilarityAggregation(layers.Layer):
    """Dot-product non-local aggregation: y_i = (1/N) Σ_j (θ_i·φ_j) g_j over N = H·W positions.

    Takes [θ, φ, g], each (B, H, W, K), and returns (B, H, W, K). N is read from the tensor, so the
    layer works for any canvas.
    """

    def call(self, inputs):
        theta, phi, g = inputs
        _, height, width, depth = ops.shape(theta)
        positions = height * width
        theta = ops.reshape(theta, (-1, positions, depth))
        phi = ops.reshape(phi, (-1, positions, depth))
        g = ops.reshape(g, (-1, positions, depth))
        # Scaling θ before the product is the same arithmetic as scaling θφᵀ after it, but keeps the
        # affinities small enough for float16 under mixed precision.
        theta = theta / ops.cast(positions, theta.dtype)
        affinity = ops.matmul(theta, ops.transpose(phi, (0, 2, 1)))
        return ops.reshape(ops.matmul(affinity, g), (-1, height, width, depth))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def _conv(filters, kernel_size, name, use_bias=True):
    return layers.Conv2D(filters, kernel_size, padding="same", use_bias=use_bias,
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY), name=name)


def _conv_bn_relu(x, filters, kernel_size, name):
    x = _conv(filters, kernel_size, f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable_unit(x, filters, name):
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer="he_normal",
                               depthwise_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
                               name=f"{name}_depthwise")(x)
    x = layers.BatchNormalization(name=f"{name}_depthwise_bn")(x)
    x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    return _conv_bn_relu(x, filters, 1, f"{name}_pointwise")


def x_block(x, filters, name):
    shortcut = _conv_bn_relu(x, filters, 1, f"{name}_shortcut")
    for unit in range(1, 4):
        x = _separable_unit(x, filters, f"{name}_sep{unit}")
    return layers.Add(name=f"{name}_add")([x, shortcut])


def feature_similarity_module(x, name="fsm"):
    channels = x.shape[-1]
    reduced, inner = channels // 8, max(channels // 16, 1)
    y = _conv_bn_relu(x, reduced, 3, f"{name}_reduce")
    theta = _conv(inner, 1, f"{name}_theta", use_bias=False)(y)
    phi = _conv(inner, 1, f"{name}_phi", use_bias=False)(y)
    g = _conv(inner, 1, f"{name}_g", use_bias=False)(y)
    context = SimilarityAggregation(name=f"{name}_similarity")([theta, phi, g])
    context = _conv(reduced, 1, f"{name}_project", use_bias=False)(context)
    y = layers.Add(name=f"{name}_nonlocal_add")([y, context])
    y = _conv_bn_relu(y, channels, 3, f"{name}_expand")
    return layers.Add(name=f"{name}_add")([y, x])


def build(input_shape, name: str = "xnet") -> keras.Model:
    """X-Net for inputs (H, W, C), H and W multiples of 16; outputs a float32 sigmoid map."""
    check_input_shape("xnet", input_shape, SIZE_MULTIPLE)
    inputs = keras.Input(shape=tuple(input_shape), name="image")

    skips = []
    x = inputs
    for level, filters in enumerate(STAGE_FILTERS, start=1):
        if level > 1:
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = x_block(x, filters, f"enc{level}")
        skips.append(x)
    x = feature_similarity_module(skips.pop())

    for level, filters in zip(range(4, 0, -1), reversed(STAGE_FILTERS[:-1])):
        x = layers.UpSampling2D(2, name=f"dec{level}_upsample")(x)
        x = _conv_bn_relu(x, filters, 3, f"dec{level}_up")
        x = layers.Concatenate(name=f"dec{level}_concat")([skips.pop(), x])
        x = x_block(x, filters, f"dec{level}")

    logits = layers.Conv2D(1, 1, name="head_conv")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(logits)
    return keras.Model(inputs, outputs, name=name)

"""RAX-Net, as the upstream code builds it (docs/upstream-raxnet.md §7).

Encoder (§7.1), for an H×W input:

- stem: Conv 3×3/2 (32) → BN → ReLU, kept as skip A (H/2);
- E64: ReLU → Conv 3×3 → BN → ReLU → SeparableConv 3×3 → BN → MaxPool 3×3/2, plus a strided
  1×1 conv shortcut of the block input; kept as skip B (H/4);
- E128, E256: the same with the conv/separable-conv pair twice; E128 is skip C (H/8), E256 the
  bottleneck (H/16).

Decoder (§7.2), four blocks F = 256, 128, 64, 32, each on the previous block's output ``prev``:

- main path: [ReLU → Conv2DTranspose 3×3 stride 1 → BN] × 4 (F = 256, 128) or × 2 (F = 64, 32),
  then UpSampling ×2 (nearest);
- residual fusion: ``r = Conv1×1(Up×2(prev)) + Conv1×1(skip)``, ``r = BN(Conv1×1(ReLU(r)))``,
  output = main path + r. The skips are C, B, A and, for the last block, the raw input image.

Head: Conv 1×1, one filter, sigmoid, at full resolution.

Keras defaults throughout ("same" padding, glorot-uniform, biases on, BN momentum 0.99 and epsilon
1e-3), as upstream. For a (208, 240, 1) input this is 4,837,473 parameters (4,829,665 trainable +
7,808 BN moving statistics) and 116 layers, the numbers of §7.3; the count does not depend on H, W.

Despite its name (Residual *Attention* Xception), the network has **no attention mechanism**
(§14 item 12): the "residual attention" of the preprint is the additive residual fusion above, and
"Xception" stands for the separable convolutions and strided 1×1 shortcuts. The stride-1
Conv2DTranspose layers are plain 3×3 convolutions; they are kept as transposed convolutions so
that the layer list (22 Conv2D, 12 Conv2DTranspose, 5 SeparableConv2D, 27 BN, ...) is upstream's.

Option: ``width`` (default 1.0, upstream's network) multiplies every filter count, for CPU-sized
runs with the same topology.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from strokeseg.errors import ConfigError
from strokeseg.models import check_input_shape

CANONICAL_INPUT = (208, 240, 1)
CANONICAL_PARAMS = 4_837_473
SIZE_MULTIPLE = 16  # four halvings (stem + three encoder blocks) must come back to H and W exactly

DECODER_FILTERS = (256, 128, 64, 32)
# E64 has one conv/separable-conv pair, E128 and E256 two (§7.1)
ENCODER_PAIRS = {64: 1, 128: 2, 256: 2}
# D256 and D128 stack four transposed convs, D64 and D32 two (§7.2)
DECODER_DEPTH = {256: 4, 128: 4, 64: 2, 32: 2}


def _scaled(filters: int, width: float) -> int:
    return max(1, int(round(filters * width)))


def _encoder_block(x, canonical: int, width: float, name: str):
    filters = _scaled(canonical, width)
    shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", name=f"{name}_shortcut")(x)
    for i in range(1, ENCODER_PAIRS[canonical] + 1):
        x = layers.Activation("relu", name=f"{name}_relu{i}a")(x)
        x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}a")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}b")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", name=f"{name}_sepconv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}b")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.Add(name=f"{name}_out")([x, shortcut])


def _decoder_block(prev, skip, canonical: int, width: float, name: str):
    filters = _scaled(canonical, width)
    x = prev
    for i in range(1, DECODER_DEPTH[canonical] + 1):
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        x = layers.Conv2DTranspose(filters, 3, padding="same", name=f"{name}_convt{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
    main = layers.UpSampling2D(2, name=f"{name}_up")(x)

    up_prev = layers.UpSampling2D(2, name=f"{name}_fuse_up")(prev)
    r = layers.Add(name=f"{name}_fuse_add")([
        layers.Conv2D(filters, 1, name=f"{name}_fuse_prev_proj")(up_prev),
        layers.Conv2D(filters, 1, name=f"{name}_fuse_skip_proj")(skip),
    ])
    r = layers.Activation("relu", name=f"{name}_fuse_relu")(r)
    r = layers.Conv2D(filters, 1, name=f"{name}_fuse_conv")(r)
    r = layers.BatchNormalization(name=f"{name}_fuse_bn")(r)
    return layers.Add(name=f"{name}_out")([main, r])


def build(input_shape: tuple[int, int, int], *, width: float = 1.0, output_prior: float | None = None,
          **unknown) -> keras.Model:
    """RAX-Net for inputs of shape (H, W, C); H and W multiples of 16.

    ``width`` multiplies every layer's filter count (rounded, at least 1): 1.0 is upstream's
    network exactly; smaller widths are for CPU-sized runs (the demo), with the same topology.
    ``output_prior`` initialises the head's bias to logit(prior) so that the untrained network
    predicts about that lesion fraction instead of 0.5 everywhere (the focal-loss initialisation of
    Lin et al. 2017); short runs then skip the first phase of learning "background". None = zero
    bias, as upstream. Parameter count and topology are unchanged."""
    if unknown:
        raise ConfigError(f"raxnet: unknown option(s) {sorted(unknown)}; accepted: width, output_prior")
    if not width > 0:
        raise ConfigError(f"raxnet: width must be > 0, got {width}")
    if output_prior is not None and not 0.0 < output_prior < 1.0:
        raise ConfigError(f"raxnet: output_prior must be in (0, 1), got {output_prior}")
    check_input_shape("raxnet", input_shape, SIZE_MULTIPLE)

    image = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(_scaled(32, width), 3, strides=2, padding="same", name="stem_conv")(image)
    x = layers.BatchNormalization(name="stem_bn")(x)
    skip_a = layers.Activation("relu", name="stem_relu")(x)

    skip_b = _encoder_block(skip_a, 64, width, "enc64")
    skip_c = _encoder_block(skip_b, 128, width, "enc128")
    x = _encoder_block(skip_c, 256, width, "enc256")

    for filters, skip in zip(DECODER_FILTERS, (skip_c, skip_b, skip_a, image)):
        x = _decoder_block(x, skip, filters, width, f"dec{filters}")

    # float32 head so the probabilities stay float32 under a mixed-precision policy
    bias = "zeros" if output_prior is None else keras.initializers.Constant(math.log(output_prior / (1 - output_prior)))
    probabilities = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", bias_initializer=bias, name="head")(x)
    return keras.Model(image, probabilities, name="raxnet")

"""CLCI-Net, the cross-level fusion and context inference network (Yang et al., MICCAI 2019,
arXiv 1907.07008), the second baseline RAX-Net is compared with.

Spec: ``docs/upstream-raxnet.md`` §10 (table, column "CLCI-Net (as used here)") and §10.4.

Encoder: five levels of two 3×3 conv-BN-ReLU with 32-64-128-256-512 channels. Between levels,
*Cross-Level Fusion* replaces plain pooling: the max-pooled map of the level above is concatenated
with 3×3 strided conv-BN-ReLU downsamplings of every shallower level's output (to the width of the
level above, strides 2, 4, 8, 16 as the depth requires) and fused by a 1×1 conv-BN-ReLU four times
wider than the next level (256, 512, 1024, 2048). The bottleneck output goes through dropout 0.5
and *CLF-ASPP*: a 1×1 branch, three dilated 3×3 branches (rates 2, 4, 6), image pooling (global
average → 1×1 → bilinear upsampling back), and 3×3 strided downsamplings of levels 1-4, all 256
wide, concatenated and fused by a 1×1 conv-BN-ReLU to 1024, then dropout 0.5. Decoder (*context
inference*): ×2 upsampling → 2×2 conv-BN-ReLU; the encoder skip → 1×1 conv-BN-ReLU to the same
width; a ConvLSTM2D (3×3) reads the two maps as a 2-step sequence (upsampled first, skip second)
and its last state goes through two 3×3 conv-BN-ReLU. A 1×1 conv with a sigmoid gives the map.
Every conv kernel is he_normal without weight decay, as in the official code.

Canonical build: the official input 224×176×1 gives 36,838,305 parameters, the count §10 gives
for the model as instantiated by the RAX-Net study; the count does not depend on H and W, and C
only changes the first convolution. The image-pooling branch is built for the static bottleneck
size (H/16, W/16), so a model serves one canvas (models are built per canvas anyway).
"""
from __future__ import annotations

import keras
from keras import layers

from strokeseg.models import check_input_shape

CANONICAL_INPUT = (224, 176, 1)
CANONICAL_PARAMS = 36_838_305
SIZE_MULTIPLE = 16

LEVEL_FILTERS = (32, 64, 128, 256, 512)
FUSION_WIDTH = 4            # the cross-level 1×1 fusion is 4× the next level's width
ASPP_FILTERS = 256
ASPP_RATES = (2, 4, 6)
DROPOUT = 0.5


def _conv_bn_relu(x, filters, kernel_size, name, strides=1, dilation_rate=1):
    x = layers.Conv2D(filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
                      padding="same", kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _double_conv(x, filters, name):
    x = _conv_bn_relu(x, filters, 3, f"{name}_a")
    return _conv_bn_relu(x, filters, 3, f"{name}_b")


def cross_level_fusion(shallower, level, name):
    """Fuse all levels above `level` (outputs listed shallow to deep) into the input of `level`."""
    filters = LEVEL_FILTERS[level - 2]
    depth = len(shallower)
    parts = [_conv_bn_relu(feature, filters, 3, f"{name}_from{source}",
                           strides=2 ** (depth + 1 - source))
             for source, feature in enumerate(shallower, start=1)]
    parts.append(layers.MaxPooling2D(2, name=f"{name}_pool")(shallower[-1]))
    x = layers.Concatenate(name=f"{name}_concat")(parts)
    return _conv_bn_relu(x, FUSION_WIDTH * LEVEL_FILTERS[level - 1], 1, f"{name}_fuse")


def clf_aspp(x, encoder, name="aspp"):
    """Atrous spatial pyramid pooling over the bottleneck plus strided views of levels 1-4."""
    height, width = x.shape[1], x.shape[2]
    branches = [_conv_bn_relu(x, ASPP_FILTERS, 1, f"{name}_1x1")]
    branches += [_conv_bn_relu(x, ASPP_FILTERS, 3, f"{name}_rate{rate}", dilation_rate=rate)
                 for rate in ASPP_RATES]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_image_pool")(x)
    pooled = _conv_bn_relu(pooled, ASPP_FILTERS, 1, f"{name}_image")
    branches.append(layers.UpSampling2D((height, width), interpolation="bilinear",
                                        name=f"{name}_image_upsample")(pooled))
    depth = len(encoder)
    branches = [_conv_bn_relu(feature, ASPP_FILTERS, 3, f"{name}_from{level}",
                              strides=2 ** (depth + 1 - level))
                for level, feature in enumerate(encoder, start=1)] + branches
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = _conv_bn_relu(x, FUSION_WIDTH * ASPP_FILTERS, 1, f"{name}_fuse")
    return layers.Dropout(DROPOUT, name=f"{name}_dropout")(x)


def context_inference(x, skip, filters, name):
    """Up-sample, then let a ConvLSTM read (decoder map, encoder skip) as a 2-step sequence."""
    height, width = skip.shape[1], skip.shape[2]
    x = layers.UpSampling2D(2, name=f"{name}_upsample")(x)
    x = _conv_bn_relu(x, filters, 2, f"{name}_up")
    skip = _conv_bn_relu(skip, filters, 1, f"{name}_skip")
    steps = [layers.Reshape((1, height, width, filters), name=f"{name}_{role}_step")(tensor)
             for role, tensor in (("decoder", x), ("skip", skip))]
    sequence = layers.Concatenate(axis=1, name=f"{name}_sequence")(steps)
    x = layers.ConvLSTM2D(filters, 3, padding="same", kernel_initializer="he_normal",
                          name=f"{name}_convlstm")(sequence)
    return _double_conv(x, filters, name)


def build(input_shape, name: str = "clci") -> keras.Model:
    """CLCI-Net for inputs (H, W, C); H and W multiples of 16. Returns a float32 sigmoid map."""
    check_input_shape("clci", input_shape, SIZE_MULTIPLE)
    inputs = keras.Input(shape=tuple(input_shape), name="image")

    encoder = [_double_conv(inputs, LEVEL_FILTERS[0], "enc1")]
    for level in range(2, len(LEVEL_FILTERS) + 1):
        x = cross_level_fusion(encoder, level, f"clf{level}")
        encoder.append(_double_conv(x, LEVEL_FILTERS[level - 1], f"enc{level}"))
    x = layers.Dropout(DROPOUT, name="enc5_dropout")(encoder.pop())
    x = clf_aspp(x, encoder)

    for level in range(len(encoder), 0, -1):
        x = context_inference(x, encoder[level - 1], LEVEL_FILTERS[level - 1], f"dec{level}")

    logits = layers.Conv2D(1, 1, name="head_conv")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(logits)
    return keras.Model(inputs, outputs, name=name)

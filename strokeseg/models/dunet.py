"""D-UNet, the dimension-fusion U-Net (Zhou et al., IEEE/ACM TCBB 2021, arXiv 1908.05104).

Spec: ``docs/upstream-raxnet.md`` §10.4 (and §14 item 18: the RAX-Net study names D-UNet but
never ran it; this is the port it lacked).

The input's C channels are C adjacent slices. They feed two encoders at once:

* a 2-D U-Net encoder, 32-64-128-256-512 channels, each level two 3×3 conv-BN-ReLU, 2×2 max pooling
  between levels, dropout 0.3 after levels 4 and 5;
* a 3-D branch that sees the slices as depth, (H, W, C) → (H, W, C, 1): 3×3×3 conv-BN-ReLU pairs
  with 32, 64 and 128 channels and 2×2×2 max pooling between them, so its level-2 and level-3 maps
  are (H/2, W/2, C/2, 64) and (H/4, W/4, C/4, 128).

The 3-D maps join the 2-D encoder at levels 2 and 3 through *D_SE_Add*: a 1×1×1 Conv3D to one
channel, whose remaining depth axis then serves as the channel axis of a 3×3 conv-ReLU to the 2-D
width; both this map and the 2-D map pass a squeeze-excite block (ratio 16, bias-free dense
layers) and are added. The decoder is the standard U-Net one: ×2 upsampling, 2×2 conv-ReLU,
concatenation with the skip, two 3×3 conv-BN-ReLU; a 1×1 conv with a sigmoid gives the map.

Canonical build: the official input (192, 192, 4) gives 8,640,163 parameters, the count in the
official README. Other channel counts C ≥ 1 are accepted (deliberate generalisation): the 3-D max
pooling uses "same" padding, so the depth goes C → ⌈C/2⌉ → ⌈C/4⌉ instead of failing below C = 4;
for C = 4 and H, W multiples of 16 this is exactly the official valid pooling. Only the first 2-D
convolution and the two fusion convolutions (whose input width is the pooled depth) depend on C, so
the count changes slightly with C and not at all with H and W.
"""
from __future__ import annotations

import keras
from keras import layers

from strokeseg.models import check_input_shape

CANONICAL_INPUT = (192, 192, 4)
CANONICAL_PARAMS = 8_640_163
SIZE_MULTIPLE = 16

ENCODER_FILTERS = (32, 64, 128, 256, 512)
BRANCH_3D_FILTERS = (32, 64, 128)
FUSED_LEVELS = (2, 3)
DROPOUT_LEVELS = (4, 5)
DROPOUT = 0.3
SE_RATIO = 16


def _conv_bn_relu_pair(x, filters, name, conv=layers.Conv2D):
    for index in (1, 2):
        x = conv(filters, 3, padding="same", kernel_initializer="he_normal",
                 name=f"{name}_conv{index}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def squeeze_excite(x, name, ratio=SE_RATIO):
    channels = x.shape[-1]
    scale = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    scale = layers.Dense(channels // ratio, activation="relu", use_bias=False,
                         kernel_initializer="he_normal", name=f"{name}_reduce")(scale)
    scale = layers.Dense(channels, activation="sigmoid", use_bias=False,
                         kernel_initializer="he_normal", name=f"{name}_excite")(scale)
    return layers.Multiply(name=f"{name}_scale")([x, scale])


def d_se_add(volume, plane, name):
    """Fuse a 3-D map (B, h, w, d, k) into a 2-D map (B, h, w, f): D_SE_Add of the paper."""
    filters = plane.shape[-1]
    x = layers.Conv3D(1, 1, kernel_initializer="he_normal", name=f"{name}_project3d")(volume)
    # Dropping the single channel leaves the depth d as the channel axis of a 2-D map.
    x = layers.Reshape(tuple(x.shape[1:4]), name=f"{name}_squeeze_depth")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = squeeze_excite(x, f"{name}_se3d")
    plane = squeeze_excite(plane, f"{name}_se2d")
    return layers.Add(name=f"{name}_add")([x, plane])


def build(input_shape, name: str = "dunet") -> keras.Model:
    """D-UNet for (H, W, C) inputs, C adjacent slices (4 in the paper); float32 sigmoid output."""
    height, width, channels = check_input_shape("dunet", input_shape, SIZE_MULTIPLE)
    inputs = keras.Input(shape=tuple(input_shape), name="slices")

    volume = layers.Reshape((height, width, channels, 1), name="slices_as_depth")(inputs)
    volumes = {}
    for level, filters in enumerate(BRANCH_3D_FILTERS, start=1):
        if level > 1:
            # float32 because TensorFlow has no float16 CPU kernel for 3-D max pooling, so the
            # layer would fail under mixed precision off the GPU; the cast costs next to nothing.
            volume = layers.MaxPooling3D(2, padding="same", dtype="float32",
                                         name=f"enc3d{level}_pool")(volume)
        volume = _conv_bn_relu_pair(volume, filters, f"enc3d{level}", conv=layers.Conv3D)
        volumes[level] = volume

    skips = []
    x = inputs
    for level, filters in enumerate(ENCODER_FILTERS, start=1):
        if level > 1:
            x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = _conv_bn_relu_pair(x, filters, f"enc{level}")
        if level in FUSED_LEVELS:
            x = d_se_add(volumes[level], x, f"fuse{level}")
        if level in DROPOUT_LEVELS:
            x = layers.Dropout(DROPOUT, name=f"enc{level}_dropout")(x)
        skips.append(x)
    x = skips.pop()

    for level, filters in zip(range(4, 0, -1), reversed(ENCODER_FILTERS[:-1])):
        x = layers.UpSampling2D(2, name=f"dec{level}_upsample")(x)
        x = layers.Conv2D(filters, 2, padding="same", activation="relu",
                          kernel_initializer="he_normal", name=f"dec{level}_up_conv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips.pop(), x])
        x = _conv_bn_relu_pair(x, filters, f"dec{level}")

    logits = layers.Conv2D(1, 1, name="head_conv")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(logits)
    return keras.Model(inputs, outputs, name=name)

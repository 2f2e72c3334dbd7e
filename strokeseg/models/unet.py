"""Classic 2-D U-Net, base 32 filters (docs/upstream-other-projects.md D.4, the LGG FLAIR U-Net).

- Encoder: four blocks of 32, 64, 128, 256 filters (``base_filters`` × 1, 2, 4, 8), each
  [Conv 3×3 (no bias) → BN → ReLU] × 2, kept as a skip, then MaxPool 2×2.
- Bridge: the same block with 512 filters at H/16 (16×16 for the published 256×256 input).
- Decoder: four levels, each ConvTranspose 2×2 stride 2 (halving the channels, with bias, as
  PyTorch's default), concatenation with the skip of that resolution, block.
- Head: Conv 1×1 → 1 channel → sigmoid inside the model.

The canonical build is D's published one, input (256, 256, 3) (pre-contrast, FLAIR, post-contrast):
7,768,929 parameters (7,763,041 trainable + 5,888 BN moving statistics), measured here; there is
no upstream count to match. The seed README's "~31 M" is the base-64 U-Net (31,049,409 here with
``base_filters=64``); D's code uses base 32, which gives a quarter of that. BN uses PyTorch's
defaults (momentum 0.1, i.e. Keras momentum 0.9, and epsilon 1e-5), since this ports PyTorch code.

Options: ``base_filters`` (default 32).
"""
from __future__ import annotations

import keras
from keras import layers

from strokeseg.errors import ConfigError
from strokeseg.models import check_input_shape

CANONICAL_INPUT = (256, 256, 3)
CANONICAL_PARAMS = 7_768_929
SIZE_MULTIPLE = 16  # four 2×2 poolings

DEPTH = 4
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch BatchNorm2d defaults


def conv_block(x, filters: int, name: str):
    """[Conv 3×3 → BN → ReLU] × 2; the conv has no bias because BN's offset replaces it."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(**BN, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build(input_shape: tuple[int, int, int], *, base_filters: int = 32, **unknown) -> keras.Model:
    """U-Net for inputs (H, W, C), H and W multiples of 16; ``base_filters`` at full resolution."""
    if unknown:
        raise ConfigError(f"unet: unknown option(s) {sorted(unknown)}; accepted: base_filters")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ConfigError(f"unet: base_filters must be a positive integer, got {base_filters!r}")
    height, width, channels = check_input_shape("unet", input_shape, SIZE_MULTIPLE)

    image = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = image, []
    for level in range(DEPTH):
        x = conv_block(x, base_filters * 2 ** level, f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = conv_block(x, base_filters * 2 ** DEPTH, "bridge")

    for level in reversed(range(DEPTH)):
        filters = base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level + 1}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = conv_block(x, filters, f"dec{level + 1}")

    logits = layers.Conv2D(1, 1, name="head")(x)
    # float32 so the probabilities stay float32 under a mixed-precision policy
    probabilities = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(image, probabilities, name="unet")

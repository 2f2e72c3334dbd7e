"""Plain 3-D U-Net: the ISLES'22 3-D attention U-Net (docs/upstream-other-projects.md C.3) without
its attention gates, and the encoder, decoder and heads both 3-D models share (their conv block and
attention gate are the 2-D attention U-Net's, ``strokeseg.models.attention_unet``, with ``dims=3``).

There is no plain 3-D U-Net upstream. This one is C.3 with the gates removed and nothing else
changed, so that training both under the same recipe measures what the gates add:

- Input (D, H, W, M): a patch of M co-registered channels (ISLES'22: DWI and ADC, M = 2), D, H and
  W multiples of 16 (four 2×2×2 poolings). The axis names are positional: (D, H, W) are the three
  spatial axes of the array in the order the data pipeline stores them.
- Encoder: four levels of 64, 128, 256, 512 filters (× ``width``), bridge of 1024 at 1/16. Each
  block is [Conv 3×3×3 (no bias) → InstanceNorm (affine) → ReLU → SpatialDropout3D 0.15] × 2;
  MaxPool 2×2×2 between levels. C.3 says ReLU, so ReLU (not nnU-Net's LeakyReLU).
- Decoder level with ``f`` output filters: ConvTranspose 2×2×2 stride 2 (2f → f, with bias, as
  PyTorch's default), concatenation with the skip of that resolution, block to ``f`` filters.
- Head: Conv 1×1×1 → 1 channel → sigmoid, in float32 so mixed precision keeps float32 outputs.
- ``deep_supervision=True`` (training only) adds one such head on each lower decoder level, at that
  level's own resolution: outputs [full, 1/2, 1/4, 1/8], as C.3's three auxiliary heads on dec2,
  dec3 and dec4. Upstream upsamples the auxiliary maps trilinearly to full size; here the targets
  are downsampled instead (nnU-Net's way, ``strokeseg.train.deep_supervision``), which avoids three
  full-size probability maps per step. The layers shared with the default build have the same
  names, so weights trained with deep supervision copy by name onto the single-output inference
  model.

Instance norm is ``GroupNormalization(groups=-1)`` (one group per channel) with PyTorch's epsilon
1e-5; it keeps no moving statistics, so every parameter is trainable. Convolutions use Keras'
default Glorot-uniform initialisation, which is C.3's Xavier-uniform. C.3's gradient checkpointing
is a memory device of PyTorch and has no counterpart here; C.3's padding of the upsampled map to the
skip's size is unnecessary because D, H and W are multiples of 16. The max-poolings compute in
float32 under mixed precision (TensorFlow has no float16 MaxPool3D kernel on CPU; the values are
the same, pooling only selects).

``width`` scales every filter count (rounded, at least 1): 0.125 gives 8-16-32-64-128, a network a
CPU trains. The canonical build is C.3's patch, (112, 112, 80, 2) (a multiple of 16 on every axis,
bridge 7×7×5): 90,300,289 parameters, measured here; C.3 publishes no count.

Options: ``width`` (default 1.0), ``deep_supervision`` (default False), ``dropout`` (spatial dropout
rate, default 0.15).
"""
from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from strokeseg.errors import ConfigError
from strokeseg.models.attention_unet import conv_block

CANONICAL_INPUT = (112, 112, 80, 2)
CANONICAL_PARAMS = 90_300_289
SIZE_MULTIPLE = 16  # four 2×2×2 poolings

DEPTH = 4
BASE_FILTERS = 64  # C.3's INIT_FEATURES as configured (the class default is 48)
DROPOUT = 0.15
OPTIONS = ("width", "deep_supervision", "dropout")

# A gate maps (skip, upsampled decoder feature, inter filters, name) to the skip to concatenate.
Gate = Callable[..., object]


def check_input_shape_3d(name: str, input_shape, multiple: int) -> tuple[int, int, int, int]:
    """(D, H, W, M) as ints, or a ConfigError naming the model: four dimensions, D, H and W
    multiples of ``multiple``, M >= 1 (the 3-D counterpart of ``models.check_input_shape``)."""
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ConfigError(f"{name}: input shape must be (D, H, W, M), got {shape}")
    depth, height, width, channels = (int(s) for s in shape)
    if depth % multiple or height % multiple or width % multiple or channels < 1:
        raise ConfigError(f"{name}: input shape {shape} must have D, H and W multiples of {multiple} "
                          "and M >= 1 channels")
    return depth, height, width, channels


def check_options(name: str, width, deep_supervision, dropout, unknown: dict) -> None:
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {sorted(unknown)}; accepted: {', '.join(OPTIONS)}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ConfigError(f"{name}: width must be a number > 0, got {width!r}")
    if not isinstance(deep_supervision, bool):
        raise ConfigError(f"{name}: deep_supervision must be true or false, got {deep_supervision!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {dropout!r}")


def scaled(filters: float, width: float) -> int:
    """A filter count times ``width``, rounded, at least 1."""
    return max(1, int(round(filters * width)))


def encoder(image, width: float, dropout: float):
    """(bridge feature at 1/16, skips from full resolution down to 1/8)."""
    x, skips = image, []
    for level in range(DEPTH):
        x = conv_block(x, scaled(BASE_FILTERS * 2 ** level, width), dropout, f"enc{level + 1}", dims=3)
        skips.append(x)
        # float32: TensorFlow has no float16 MaxPool3D kernel on CPU, so under mixed precision a
        # float16 pool only runs on a GPU; the next conv casts back to float16 (a cheap cast).
        x = layers.MaxPooling3D(2, dtype="float32", name=f"enc{level + 1}_pool")(x)
    return conv_block(x, scaled(BASE_FILTERS * 2 ** DEPTH, width), dropout, "bridge", dims=3), skips


def decoder(x, skips: list, width: float, dropout: float, gate: Gate | None) -> list:
    """Decoder features from full resolution down to 1/8 (dec1 … dec4); ``gate`` filters each skip."""
    features = []
    for level in reversed(range(DEPTH)):
        filters = scaled(BASE_FILTERS * 2 ** level, width)
        x = layers.Conv3DTranspose(filters, 2, strides=2, name=f"dec{level + 1}_upconv")(x)
        skip = skips[level]
        if gate is not None:
            # F_int = out / 2 (C.3), scaled like every other filter count
            skip = gate(skip, x, scaled(BASE_FILTERS * 2 ** level / 2, width), f"dec{level + 1}_gate")
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skip])
        x = conv_block(x, filters, dropout, f"dec{level + 1}", dims=3)
        features.append(x)
    return features[::-1]


def head(x, name: str):
    logits = layers.Conv3D(1, 1, name=f"{name}_head")(x)
    # float32 so the probabilities stay float32 under a mixed-precision policy
    return layers.Activation("sigmoid", dtype="float32", name=name)(logits)


def output_names(deep_supervision: bool) -> list[str]:
    """The outputs in order: the full-resolution map, then one per lower scale i (1/2**i)."""
    return ["probabilities"] + ([f"probabilities_scale{i}" for i in range(1, DEPTH)] if deep_supervision else [])


def assemble(name: str, input_shape, *, width: float, deep_supervision: bool, dropout: float,
             gate: Gate | None, unknown: dict) -> keras.Model:
    """The shared 3-D U-Net: checks, encoder, decoder (gated or not), head(s)."""
    check_options(name, width, deep_supervision, dropout, unknown)
    check_input_shape_3d(name, input_shape, SIZE_MULTIPLE)
    image = keras.Input(shape=tuple(int(s) for s in input_shape), name="image")
    bridge, skips = encoder(image, width, dropout)
    features = decoder(bridge, skips, width, dropout, gate)
    names = output_names(deep_supervision)
    outputs = [head(feature, output) for feature, output in zip(features, names)]
    return keras.Model(image, outputs if deep_supervision else outputs[0], name=name)


def build(input_shape: tuple[int, int, int, int], *, width: float = 1.0, deep_supervision: bool = False,
          dropout: float = DROPOUT, **unknown) -> keras.Model:
    """3-D U-Net for inputs (D, H, W, M), D, H and W multiples of 16.

    Returns one (D, H, W, 1) probability map, or with ``deep_supervision`` the list [full, 1/2, 1/4,
    1/8] of probability maps (training only; the default build is the inference model)."""
    return assemble("unet3d", input_shape, width=width, deep_supervision=deep_supervision, dropout=dropout,
                    gate=None, unknown=unknown)

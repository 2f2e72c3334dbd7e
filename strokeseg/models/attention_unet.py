"""2-D attention U-Net: additive attention gates (Oktay et al. 2018) on every skip.

The 2-D counterpart of the ISLES'22 3-D attention U-Net (docs/upstream-other-projects.md C.3):

- Encoder: four levels of ``base_filters`` × 1, 2, 4, 8 filters (64-128-256-512 by default, the
  configuration upstream trains with), bridge of × 16 (1024) at H/16. Each block is
  [Conv 3×3 (no bias) → InstanceNorm (affine) → ReLU → SpatialDropout 0.15] × 2; MaxPool 2×2
  between levels.
- Decoder level with ``f`` output filters: ConvTranspose 2×2 stride 2 (2f → f, with bias), then an
  additive attention gate on the skip of that resolution, gated by the upsampled decoder feature:
  ``psi = sigmoid(IN(Conv1×1_1(ReLU(IN(Conv1×1_{f/2}(g)) + IN(Conv1×1_{f/2}(skip))))))`` and
  ``skip ← skip · psi``; then concatenation and a conv block to ``f`` filters.
- Head: Conv 1×1 → 1 channel → sigmoid.

Differences from C, deliberately: 2-D instead of 3-D; no deep-supervision heads (the models here
have one output; C's auxiliary losses are a training choice, not part of the segmenter); the 1×1
convs in the gates carry no bias, because the instance norm after each removes any per-channel
constant; no padding of the upsampled map to the skip size, since H and W are multiples of 16.
Instance norm is ``GroupNormalization(groups=-1)`` with PyTorch's epsilon 1e-5.

C's published input is a 3-D patch with no 2-D counterpart, so the canonical build is the
project's axial canvas (208, 240, 1): 31,387,049 parameters, all trainable (instance norm keeps no
moving statistics), measured here; there is no upstream count to match.

Options: ``base_filters`` (default 64), ``dropout`` (spatial dropout rate, default 0.15).
"""
from __future__ import annotations

import keras
from keras import layers

from strokeseg.errors import ConfigError
from strokeseg.models import check_input_shape

CANONICAL_INPUT = (208, 240, 1)
CANONICAL_PARAMS = 31_387_049
SIZE_MULTIPLE = 16  # four 2×2 poolings

DEPTH = 4
EPSILON = 1e-5  # PyTorch InstanceNorm default


# The blocks below serve the 2-D model and, with ``dims=3``, the 3-D ones (strokeseg.models.unet3d,
# attention_unet3d): the same layers and layer names, convolutions and dropout of that dimension.
CONV = {2: layers.Conv2D, 3: layers.Conv3D}
SPATIAL_DROPOUT = {2: layers.SpatialDropout2D, 3: layers.SpatialDropout3D}


def instance_norm(name: str):
    return layers.GroupNormalization(groups=-1, epsilon=EPSILON, name=name)


def conv_block(x, filters: int, dropout: float, name: str, dims: int = 2):
    """[Conv 3 per axis (no bias: the norm's offset replaces it) → IN → ReLU → SpatialDropout] × 2."""
    for i in (1, 2):
        x = CONV[dims](filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = instance_norm(f"{name}_in{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if dropout:
            x = SPATIAL_DROPOUT[dims](dropout, name=f"{name}_dropout{i}")(x)
    return x


def attention_gate(skip, gate, inter_filters: int, name: str, dims: int = 2):
    """Additive attention: weight each skip pixel (voxel) by a [0, 1] coefficient from both maps."""
    conv = CONV[dims]
    g = conv(inter_filters, 1, use_bias=False, name=f"{name}_wg")(gate)
    g = instance_norm(f"{name}_wg_in")(g)
    s = conv(inter_filters, 1, use_bias=False, name=f"{name}_wx")(skip)
    s = instance_norm(f"{name}_wx_in")(s)
    a = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([g, s]))
    a = conv(1, 1, use_bias=False, name=f"{name}_psi")(a)
    a = instance_norm(f"{name}_psi_in")(a)
    psi = layers.Activation("sigmoid", name=f"{name}_coefficients")(a)
    return layers.Multiply(name=f"{name}_gated")([skip, psi])


def build(input_shape: tuple[int, int, int], *, base_filters: int = 64, dropout: float = 0.15,
          **unknown) -> keras.Model:
    """Attention U-Net for inputs (H, W, C), H and W multiples of 16."""
    if unknown:
        raise ConfigError(f"attention_unet: unknown option(s) {sorted(unknown)}; "
                          "accepted: base_filters, dropout")
    if not isinstance(base_filters, int) or base_filters < 2:
        raise ConfigError("attention_unet: base_filters must be an integer >= 2, "
                          f"got {base_filters!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"attention_unet: dropout must be in [0, 1), got {dropout!r}")
    height, width, channels = check_input_shape("attention_unet", input_shape, SIZE_MULTIPLE)

    image = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = image, []
    for level in range(DEPTH):
        x = conv_block(x, base_filters * 2 ** level, dropout, f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = conv_block(x, base_filters * 2 ** DEPTH, dropout, "bridge")

    for level in reversed(range(DEPTH)):
        filters = base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level + 1}_upconv")(x)
        gated = attention_gate(skips[level], x, filters // 2, f"dec{level + 1}_gate")
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, gated])
        x = conv_block(x, filters, dropout, f"dec{level + 1}")

    logits = layers.Conv2D(1, 1, name="head")(x)
    # float32 so the probabilities stay float32 under a mixed-precision policy
    probabilities = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(image, probabilities, name="attention_unet")

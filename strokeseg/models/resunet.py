"""U-Net with a ResNet-50 encoder (docs/upstream-other-projects.md B.2, StrokeSeg AI's best
model: segmentation_models_pytorch ``Unet(encoder_name="resnet50")``).

- Channels: a 1×1 conv maps the C input channels (adjacent slices) to the 3 channels ResNet-50
  expects, so an ImageNet-shaped encoder (and its weights) fits any C. smp instead sums the first
  conv's RGB kernels for C = 1; a learnt 1×1 map covers that and every other C.
- Encoder: ``keras.applications.ResNet50(include_top=False, weights=None)``, randomly initialised
  and never downloaded. Its features at strides 2, 4, 8, 16, 32 (``conv1_relu``,
  ``conv2_block3_out``, ``conv3_block4_out``, ``conv4_block6_out``, ``conv5_block3_out``; 64, 256,
  512, 1024, 2048 channels) feed the decoder.
- Decoder (smp's U-Net decoder): five blocks of 256, 128, 64, 32, 16 filters, each UpSampling ×2
  (nearest) → concatenation with the encoder feature of that stride (none for the last block) →
  [Conv 3×3 (no bias) → BN → ReLU] × 2.
- Head: Conv 3×3 → 1 channel → sigmoid (smp leaves logits; the loss there is BCE-with-logits).

Sizes: ResNet-50 halves the resolution five times, so it needs H and W multiples of 32, which the
project's canvases (208×240, 240×208, 208×208) are not. Rather than refuse them, the model
zero-pads its input symmetrically to the next multiple of 32 and crops the logits back, so
``SIZE_MULTIPLE`` is 16 like the other models (a deliberate deviation from "32"); inputs that are
already multiples of 32 pass untouched.

Weights: ``encoder_weights`` is a path to a local weights file of ``keras.applications.ResNet50``
without its top (e.g. Keras's ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, or a
``.weights.h5`` saved from this encoder); it is loaded with ``load_weights``. A missing file is an
``InputError`` naming it; nothing is ever downloaded.

Count: canonical input (208, 240, 1), the axial canvas (B publishes no count, and its 256×256 CT
input is the same network): 32,602,775 parameters (32,547,671 trainable + 55,104 BN moving
statistics), measured here, independent of H, W. It reconciles exactly with smp's ResNet-50 U-Net
(32,521,105 PyTorch parameters for 3 input channels): + 26,560 conv biases that Keras's ResNet-50
has and torchvision's does not, + 6 for the 1×1 channel map, + 55,104 BN moving statistics, which
``count_params`` counts and PyTorch's ``parameters()`` does not.
"""
from __future__ import annotations

import os

import keras
from keras import layers

from strokeseg.errors import ConfigError, InputError
from strokeseg.models import check_input_shape

CANONICAL_INPUT = (208, 240, 1)
CANONICAL_PARAMS = 32_602_775
SIZE_MULTIPLE = 16  # padded inside the model to ENCODER_MULTIPLE; see the module docstring
ENCODER_MULTIPLE = 32

# ResNet-50 feature maps used as skips, shallow to deep (strides 2, 4, 8, 16) and the bottleneck
ENCODER_FEATURES = ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                    "conv5_block3_out")
DECODER_FILTERS = (256, 128, 64, 32, 16)
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch BatchNorm2d defaults, as in smp's decoder


def _padding(size: int) -> tuple[int, int]:
    extra = -size % ENCODER_MULTIPLE
    return extra // 2, extra - extra // 2


def _encoder(height: int, width: int, encoder_weights: str | None) -> keras.Model:
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(height, width, 3))
    if encoder_weights is not None:
        if not os.path.isfile(encoder_weights):
            raise InputError(encoder_weights, "encoder weights file not found (resunet loads "
                             "ResNet-50 weights from a local file only, never downloads them)")
        backbone.load_weights(encoder_weights)
    features = [backbone.get_layer(name).output for name in ENCODER_FEATURES]
    return keras.Model(backbone.input, features, name="resnet50_encoder")


def _decoder_block(x, skip, filters: int, name: str):
    x = layers.UpSampling2D(2, name=f"{name}_up")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(**BN, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build(input_shape: tuple[int, int, int], *, encoder_weights: str | None = None,
          **unknown) -> keras.Model:
    """ResNet-50 U-Net for inputs (H, W, C), H and W multiples of 16."""
    if unknown:
        raise ConfigError(f"resunet: unknown option(s) {sorted(unknown)}; "
                          "accepted: encoder_weights")
    height, width, channels = check_input_shape("resunet", input_shape, SIZE_MULTIPLE)
    if encoder_weights is not None:
        encoder_weights = os.fspath(encoder_weights)

    image = keras.Input(shape=tuple(input_shape), name="image")
    pad_h, pad_w = _padding(height), _padding(width)
    x = image
    if any(pad_h + pad_w):
        x = layers.ZeroPadding2D((pad_h, pad_w), name="pad_to_encoder")(x)
    x = layers.Conv2D(3, 1, name="channels_to_rgb")(x)

    encoder = _encoder(height + sum(pad_h), width + sum(pad_w), encoder_weights)
    *skips, x = encoder(x)
    for i, filters in enumerate(DECODER_FILTERS):
        skip = skips[-1 - i] if i < len(skips) else None
        x = _decoder_block(x, skip, filters, f"dec{i + 1}")

    logits = layers.Conv2D(1, 3, padding="same", name="head")(x)
    if any(pad_h + pad_w):
        logits = layers.Cropping2D((pad_h, pad_w), name="crop_to_input")(logits)
    # float32 so the probabilities stay float32 under a mixed-precision policy
    probabilities = layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(image, probabilities, name="resunet")

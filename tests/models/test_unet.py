"""Classic U-Net (reference/upstream-other-seeds.md D.4): size, canvases and the model contract."""
from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, unet

from model_checks import assert_float32_under_mixed_precision, assert_training_lowers_loss

CANVASES = [(208, 240, 1), (240, 208, 1), (208, 208, 1)]


@pytest.fixture(scope="module")
def canonical():
    return unet.build(unet.CANONICAL_INPUT)


def test_canonical_size(canonical):
    assert unet.CANONICAL_INPUT == (256, 256, 3)  # D's published input
    assert canonical.count_params() == unet.CANONICAL_PARAMS == 7_768_929
    trainable = sum(int(np.prod(w.shape)) for w in canonical.trainable_weights)
    assert trainable == 7_763_041  # the other 5,888 are BN moving statistics


def test_architecture_is_ds(canonical):
    kinds = collections.Counter(type(layer).__name__ for layer in canonical.layers)
    assert kinds["Conv2D"] == 2 * 9 + 1 and kinds["Conv2DTranspose"] == 4
    assert kinds["MaxPooling2D"] == 4 and kinds["Concatenate"] == 4
    # bridge of 512 filters at 16²
    assert canonical.get_layer("bridge_conv2").output.shape[1:] == (16, 16, 512)
    assert not canonical.get_layer("enc1_conv1").use_bias


def test_base_filters_option_scales_the_network():
    # the seed README's "~31 M" is the base-64 network
    assert unet.build(unet.CANONICAL_INPUT, base_filters=64).count_params() == 31_049_409


@pytest.mark.parametrize("canvas", CANVASES)
def test_canvases_build(canvas):
    model = build_model("unet", canvas)
    assert model.output_shape == (None, *canvas[:2], 1)
    # only the first convolution depends on C: 3 -> 1 channel removes 2·9·32 weights
    assert model.count_params() == unet.CANONICAL_PARAMS - 2 * 9 * 32


def test_full_size_forward_is_a_float32_probability_map(canonical):
    x = np.random.default_rng(0).random((1, *unet.CANONICAL_INPUT), dtype=np.float32)
    y = keras.ops.convert_to_numpy(canonical(x, training=False))
    assert y.shape == (1, 256, 256, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))


def test_mixed_precision_output_stays_float32():
    assert_float32_under_mixed_precision(lambda: unet.build((32, 32, 2), base_filters=8),
                                         (32, 32, 2), "enc1_conv1")

def test_a_few_training_steps_lower_the_loss():
    assert_training_lowers_loss(lambda: unet.build((32, 32, 1), base_filters=8),
                                (32, 32, 1), n=4, steps=6, seed=42, threshold=0.7)

@pytest.mark.parametrize("shape", [(200, 240, 1), (208, 232, 1), (208, 240, 0)])
def test_bad_input_shape_is_a_clear_error(shape):
    with pytest.raises(ConfigError, match="multiples of 16"):
        unet.build(shape)
    with pytest.raises(ConfigError, match="multiples of 16"):
        build_model("unet", shape)


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown option.*depth.*accepted: base_filters"):
        unet.build((32, 32, 1), depth=5)
    with pytest.raises(ConfigError, match="base_filters"):
        unet.build((32, 32, 1), base_filters=0)

"""Classic U-Net (docs/upstream-other-projects.md D.4): size, architecture, channels and options.

The model contract (canonical count, canvases, output, mixed precision, training, input shapes) is
checked for every registered model in test_model_contract.py.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, unet


@pytest.fixture(scope="module")
def canonical():
    return unet.build(unet.CANONICAL_INPUT)


def test_canonical_size(canonical):
    assert unet.CANONICAL_INPUT == (256, 256, 3)  # D's published input
    assert unet.CANONICAL_PARAMS == 7_768_929
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


def test_one_channel_canvas_drops_only_first_conv_weights():
    # the contract suite checks the count is the same on every canvas; only the first convolution
    # depends on C: 3 -> 1 channel removes 2·9·32 weights
    assert build_model("unet", (208, 240, 1)).count_params() == unet.CANONICAL_PARAMS - 2 * 9 * 32


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown option.*depth.*accepted: base_filters"):
        unet.build((32, 32, 1), depth=5)
    with pytest.raises(ConfigError, match="base_filters"):
        unet.build((32, 32, 1), base_filters=0)

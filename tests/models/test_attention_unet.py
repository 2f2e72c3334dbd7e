"""2-D attention U-Net (docs/upstream-other-projects.md C.3 in 2-D): gates, size, options.

The model contract (canvases, output, mixed precision, training, input shapes) is checked for every
registered model in test_model_contract.py.
"""
from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import attention_unet


@pytest.fixture(scope="module")
def canonical():
    return attention_unet.build(attention_unet.CANONICAL_INPUT)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    return attention_unet.build((32, 32, 2), base_filters=8)


def test_canonical_size(canonical):
    assert attention_unet.CANONICAL_INPUT == (208, 240, 1)
    assert attention_unet.CANONICAL_PARAMS == 31_387_049
    # instance norm keeps no moving statistics: every parameter is trainable
    assert sum(int(np.prod(w.shape)) for w in canonical.trainable_weights) == 31_387_049


def test_every_skip_is_gated(canonical):
    kinds = collections.Counter(type(layer).__name__ for layer in canonical.layers)
    assert kinds["Multiply"] == 4 and kinds["Concatenate"] == 4
    assert kinds["BatchNormalization"] == 0
    assert kinds["SpatialDropout2D"] == 2 * 9
    for level, filters in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        assert canonical.get_layer(f"dec{level}_gate_wx").filters == filters // 2  # F_int = out / 2
        assert canonical.get_layer(f"dec{level}_gate_coefficients").output.shape[-1] == 1
    assert canonical.get_layer("bridge_conv2").output.shape[1:] == (13, 15, 1024)


def test_attention_coefficients_are_in_unit_interval(small):
    probe = keras.Model(small.input, [small.get_layer(f"dec{i}_gate_coefficients").output
                                      for i in (1, 2, 3, 4)])
    x = np.random.default_rng(0).random((2, 32, 32, 2), dtype=np.float32)
    for psi in probe(x):
        psi = keras.ops.convert_to_numpy(psi)
        assert psi.shape[-1] == 1 and np.all((psi >= 0) & (psi <= 1))


def test_dropout_option():
    model = attention_unet.build((32, 32, 1), base_filters=4, dropout=0.0)
    assert not any(isinstance(layer, keras.layers.SpatialDropout2D) for layer in model.layers)


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown option.*deep_supervision"):
        attention_unet.build((32, 32, 1), deep_supervision=True)
    with pytest.raises(ConfigError, match="base_filters"):
        attention_unet.build((32, 32, 1), base_filters=1)
    with pytest.raises(ConfigError, match="dropout"):
        attention_unet.build((32, 32, 1), dropout=1.5)

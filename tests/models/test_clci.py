"""CLCI-Net port: parameter count as instantiated upstream, canvases, output contract, training.

The model has 36.8M parameters; beyond building, everything runs at 32×32 (the image-pooling
branch then pools a 2×2 bottleneck, which is enough to exercise it).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, clci

from model_checks import (assert_float32_under_mixed_precision, assert_training_lowers_loss,
                          tiny_batch as _batch, probability_map as _probabilities)

CANVASES = [(208, 240), (240, 208), (208, 208)]


def test_canonical_parameter_count():
    assert clci.CANONICAL_INPUT == (224, 176, 1)
    assert clci.CANONICAL_PARAMS == 36_838_305
    assert clci.build(clci.CANONICAL_INPUT).count_params() == clci.CANONICAL_PARAMS


@pytest.mark.parametrize("canvas", CANVASES)
def test_canvases_build_with_the_canonical_count(canvas):
    model = build_model("clci", (*canvas, 1))
    assert model.output_shape == (None, *canvas, 1)
    assert model.count_params() == clci.CANONICAL_PARAMS
    # image pooling is broadcast back to the bottleneck grid of this canvas
    assert model.get_layer("aspp_image_upsample").output.shape[1:3] == (canvas[0] // 16,
                                                                        canvas[1] // 16)


def test_adjacent_slices_as_channels_and_non_square_input():
    keras.utils.set_random_seed(0)
    _probabilities(clci.build((32, 48, 3)), _batch((32, 48, 3))[0])


def test_mixed_precision_output_is_float32():
    assert_float32_under_mixed_precision(lambda: clci.build((32, 32, 1)), (32, 32, 1))

def test_training_steps_lower_the_loss():
    assert_training_lowers_loss(lambda: clci.build((32, 32, 1)), (32, 32, 1))

@pytest.mark.parametrize("shape", [(30, 32, 1), (32, 8, 1), (32, 32, 0), (32, 32)])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="clci"):
        clci.build(shape)

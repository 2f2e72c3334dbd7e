"""D-UNet port: published parameter count, canvases, other slice counts, output, training."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, dunet

from model_checks import (assert_float32_under_mixed_precision, assert_training_lowers_loss,
                          tiny_batch as _batch, probability_map as _probabilities)

CANVASES = [(208, 240), (240, 208), (208, 208)]


@pytest.fixture(scope="module")
def canonical():
    return dunet.build(dunet.CANONICAL_INPUT)


def test_canonical_parameter_count(canonical):
    assert dunet.CANONICAL_INPUT == (192, 192, 4)
    assert dunet.CANONICAL_PARAMS == 8_640_163
    assert canonical.count_params() == dunet.CANONICAL_PARAMS


def test_canonical_forward_batch_one(canonical):
    _probabilities(canonical, _batch(dunet.CANONICAL_INPUT, n=1)[0])


@pytest.mark.parametrize("canvas", CANVASES)
def test_canvases_build_with_the_canonical_count(canvas):
    model = build_model("dunet", (*canvas, 4))
    assert model.output_shape == (None, *canvas, 1)
    assert model.count_params() == dunet.CANONICAL_PARAMS


@pytest.mark.parametrize("slices", [1, 2, 3, 7])
def test_other_slice_counts_pool_the_depth_with_ceiling(slices):
    model = dunet.build((32, 32, slices))
    # the fusion convolutions read the pooled depth of the 3-D branch as channels
    assert model.get_layer("fuse2_squeeze_depth").output.shape[-1] == -(-slices // 2)
    assert model.get_layer("fuse3_squeeze_depth").output.shape[-1] == -(-slices // 4)
    _probabilities(model, _batch((32, 32, slices))[0])


def test_mixed_precision_output_is_float32():
    assert_float32_under_mixed_precision(lambda: dunet.build((32, 32, 4)), (32, 32, 4))

def test_training_steps_lower_the_loss():
    assert_training_lowers_loss(lambda: dunet.build((32, 32, 4)), (32, 32, 4))

@pytest.mark.parametrize("shape", [(30, 32, 4), (32, 24, 4), (32, 32, 0), (32, 32)])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="dunet"):
        dunet.build(shape)

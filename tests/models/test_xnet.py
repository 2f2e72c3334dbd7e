"""X-Net port: published parameter count, canvases, output contract, FSM arithmetic, training."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, xnet

from model_checks import (assert_float32_under_mixed_precision, assert_training_lowers_loss,
                          tiny_batch as _batch)

CANVASES = [(208, 240), (240, 208), (208, 208)]


@pytest.fixture(scope="module")
def canonical():
    return xnet.build(xnet.CANONICAL_INPUT)


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return xnet.build((32, 32, 3))


def test_canonical_parameter_count(canonical):
    assert xnet.CANONICAL_INPUT == (224, 192, 1)
    assert xnet.CANONICAL_PARAMS == 15_117_646
    assert canonical.count_params() == xnet.CANONICAL_PARAMS


@pytest.mark.parametrize("canvas", CANVASES)
def test_canvases_build_with_the_canonical_count(canvas):
    model = xnet.build((*canvas, 1))
    assert model.output_shape == (None, *canvas, 1)
    assert model.count_params() == xnet.CANONICAL_PARAMS


def test_full_canvas_forward_batch_one():
    model = build_model("xnet", (208, 240, 1))
    x, _ = _batch((208, 240, 1), n=1)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (1, 208, 240, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))


def test_adjacent_slices_as_channels(tiny):
    x, _ = _batch((32, 32, 3))
    y = keras.ops.convert_to_numpy(tiny(x, training=False))
    assert y.shape == (2, 32, 32, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))


def test_similarity_aggregation_matches_reference():
    rng = np.random.default_rng(1)
    theta, phi, g = (rng.standard_normal((2, 3, 4, 5)).astype("float32") for _ in range(3))
    got = keras.ops.convert_to_numpy(xnet.SimilarityAggregation()([theta, phi, g]))
    flat = [a.reshape(2, 12, 5) for a in (theta, phi, g)]
    want = (flat[0] @ flat[1].transpose(0, 2, 1) / 12) @ flat[2]
    np.testing.assert_allclose(got, want.reshape(2, 3, 4, 5), rtol=1e-5, atol=1e-5)


def test_mixed_precision_output_is_float32():
    assert_float32_under_mixed_precision(lambda: xnet.build((32, 32, 1)), (32, 32, 1))

def test_training_steps_lower_the_loss():
    assert_training_lowers_loss(lambda: xnet.build((32, 32, 1)), (32, 32, 1))

def test_save_and_reload_keep_the_outputs(tiny, tmp_path):
    path = tmp_path / "xnet.keras"
    tiny.save(path)
    reloaded = keras.saving.load_model(path)
    x, _ = _batch((32, 32, 3))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)),
                               keras.ops.convert_to_numpy(tiny(x, training=False)), atol=1e-6)


@pytest.mark.parametrize("shape", [(30, 32, 1), (32, 40, 1), (32, 32, 0), (32, 32)])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="xnet"):
        xnet.build(shape)

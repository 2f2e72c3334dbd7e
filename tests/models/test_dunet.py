"""D-UNet port: published parameter count, canvases, other slice counts, output, training."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import build_model, dunet

CANVASES = [(208, 240), (240, 208), (208, 208)]


@pytest.fixture(scope="module")
def canonical():
    return dunet.build(dunet.CANONICAL_INPUT)


def _batch(shape, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape)).astype("float32")
    return x, (x[..., :1] > 0.6).astype("float32")


def _probabilities(model, x):
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (*x.shape[:3], 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    return y


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
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = dunet.build((32, 32, 4))
        x = _batch((32, 32, 4))[0]
        _probabilities(model, x)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    model = dunet.build((32, 32, 4))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  run_eagerly=True)  # tracing costs more than four tiny eager steps
    x, y = _batch((32, 32, 4))
    losses = [float(model.train_on_batch(x, y)) for _ in range(4)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("shape", [(30, 32, 4), (32, 24, 4), (32, 32, 0), (32, 32)])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="dunet"):
        dunet.build(shape)

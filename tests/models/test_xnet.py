"""X-Net port: published parameter count, slices, FSM arithmetic, saving.

The model contract (canonical count, canvases, output, mixed precision, training, input shapes) is
checked for every registered model in test_model_contract.py.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.models import xnet

from model_checks import tiny_batch as _batch


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return xnet.build((32, 32, 3))


def test_canonical_input_and_parameter_count_are_published():
    assert xnet.CANONICAL_INPUT == (224, 192, 1)
    assert xnet.CANONICAL_PARAMS == 15_117_646


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


def test_save_and_reload_keep_the_outputs(tiny, tmp_path):
    path = tmp_path / "xnet.keras"
    tiny.save(path)
    reloaded = keras.saving.load_model(path)
    x, _ = _batch((32, 32, 3))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)),
                               keras.ops.convert_to_numpy(tiny(x, training=False)), atol=1e-6)

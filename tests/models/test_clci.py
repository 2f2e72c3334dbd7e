"""CLCI-Net port: parameter count as instantiated upstream, image pooling on the canvases, slices.

The model contract (canonical count, canvases, output, mixed precision, training, input shapes) is
checked for every registered model in test_model_contract.py. The model has 36.8M parameters;
beyond the canvases, everything runs at 32×32 (the image-pooling branch then pools a 2×2
bottleneck, which is enough to exercise it).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.models import build_model, clci

from model_checks import probability_map as _probabilities
from model_checks import tiny_batch as _batch

CANVASES = [(208, 240), (240, 208), (208, 208)]


def test_canonical_input_and_parameter_count_are_upstreams():
    assert clci.CANONICAL_INPUT == (224, 176, 1)
    assert clci.CANONICAL_PARAMS == 36_838_305


@pytest.mark.parametrize("canvas", CANVASES)
def test_image_pooling_is_broadcast_to_the_bottleneck_of_each_canvas(canvas):
    model = build_model("clci", (*canvas, 1))
    # image pooling is broadcast back to the bottleneck grid of this canvas
    assert model.get_layer("aspp_image_upsample").output.shape[1:3] == (canvas[0] // 16,
                                                                        canvas[1] // 16)


def test_adjacent_slices_as_channels_and_non_square_input():
    keras.utils.set_random_seed(0)
    _probabilities(clci.build((32, 48, 3)), _batch((32, 48, 3))[0])


def test_save_and_reload_in_safe_mode_keep_the_outputs(tmp_path):
    from strokeseg.models import load_model

    keras.utils.set_random_seed(0)
    model = clci.build((32, 32, 1))
    x = _batch((32, 32, 1))[0]
    model.save(tmp_path / "clci.keras")
    reloaded = load_model(tmp_path / "clci.keras")      # safe mode, as best.keras and predict load it
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)),
                               keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-6)

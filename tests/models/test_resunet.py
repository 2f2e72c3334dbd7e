"""U-Net with a ResNet-50 encoder (docs/upstream-other-projects.md B.2): size, padding to 32,
local encoder weights, slices and options.

The model contract (canonical count, canvases, output, mixed precision, training, input shapes) is
checked for every registered model in test_model_contract.py.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError, InputError
from strokeseg.models import resunet


@pytest.fixture(scope="module")
def canonical():
    return resunet.build(resunet.CANONICAL_INPUT)


def test_canonical_size(canonical):
    assert resunet.CANONICAL_INPUT == (208, 240, 1)
    assert resunet.CANONICAL_PARAMS == 32_602_775
    trainable = sum(int(np.prod(w.shape)) for w in canonical.trainable_weights)
    assert trainable == 32_547_671  # the other 55,104 are BN moving statistics
    # smp's ResNet-50 U-Net has 32,521,105 parameters; Keras's ResNet-50 convs add 26,560 biases
    assert trainable - 26_560 - 6 == 32_521_105
    assert canonical.get_layer("resnet50_encoder").count_params() == 23_587_712


def test_canvas_is_padded_to_the_encoders_multiple_and_cropped_back(canonical):
    assert canonical.get_layer("pad_to_encoder").output.shape[1:3] == (224, 256)
    assert canonical.get_layer("crop_to_input").output.shape[1:3] == (208, 240)
    aligned = resunet.build((64, 96, 1))
    assert not any(isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D))
                   for layer in aligned.layers)


def test_adjacent_slices_as_channels():
    model = resunet.build((48, 32, 5))
    assert model.get_layer("channels_to_rgb").output.shape[-1] == 3
    y = model(np.zeros((1, 48, 32, 5), np.float32))
    assert tuple(y.shape) == (1, 48, 32, 1)


def test_encoder_weights_load_from_a_local_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = resunet.build((32, 32, 1)).get_layer("resnet50_encoder")
    path = tmp_path / "encoder.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = resunet.build((64, 32, 3), encoder_weights=str(path)).get_layer("resnet50_encoder")
    for expected, got in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                      keras.ops.convert_to_numpy(expected))


def test_missing_encoder_weights_name_the_file(tmp_path):
    missing = tmp_path / "resnet50_notop.h5"
    with pytest.raises(InputError, match="resnet50_notop.h5.*not found"):
        resunet.build((32, 32, 1), encoder_weights=missing)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown option.*accepted: encoder_weights"):
        resunet.build((32, 32, 1), weights="imagenet")

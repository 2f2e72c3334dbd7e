"""RAX-Net: the layer list and size of docs/upstream-raxnet.md §7, slices, width, output prior.

The model contract (canonical count, canvases, output, mixed precision, training, input shapes) is
checked for every registered model in test_model_contract.py.
"""
from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import raxnet


@pytest.fixture(scope="module")
def canonical():
    return raxnet.build(raxnet.CANONICAL_INPUT)


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_canonical_size_is_upstreams(canonical):
    assert raxnet.CANONICAL_INPUT == (208, 240, 1)
    assert raxnet.CANONICAL_PARAMS == 4_837_473
    assert _trainable(canonical) == 4_829_665  # the other 7,808 are BN moving statistics


def test_layer_list_is_upstreams(canonical):
    kinds = collections.Counter(type(layer).__name__ for layer in canonical.layers)
    assert len(canonical.layers) == 116
    assert kinds["Conv2D"] == 22 and kinds["Conv2DTranspose"] == 12
    assert kinds["SeparableConv2D"] == 5 and kinds["BatchNormalization"] == 27
    assert kinds["Add"] == 11 and kinds["UpSampling2D"] == 8 and kinds["MaxPooling2D"] == 3
    # the decoder's transposed convolutions have stride 1: plain 3x3 convolutions
    assert all(layer.strides == (1, 1) for layer in canonical.layers
               if isinstance(layer, keras.layers.Conv2DTranspose))


def test_last_decoder_block_fuses_the_raw_image(canonical):
    skip_proj = canonical.get_layer("dec32_fuse_skip_proj")
    assert skip_proj.input is canonical.input


def test_adjacent_slices_as_channels():
    model = raxnet.build((32, 48, 3))
    y = model(np.zeros((2, 32, 48, 3), np.float32))
    assert tuple(y.shape) == (2, 32, 48, 1)


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown option.*filters"):
        raxnet.build((32, 32, 1), filters=16)


def test_width_scales_every_layer_and_one_is_upstream_exactly():
    from strokeseg.models import raxnet

    assert raxnet.build((32, 32, 1), width=1.0).count_params() == raxnet.build((32, 32, 1)).count_params()
    narrow = raxnet.build((32, 32, 1), width=0.25)
    assert narrow.get_layer("stem_conv").filters == 8 and narrow.get_layer("enc256_conv1").filters == 64
    assert narrow.count_params() < raxnet.build((32, 32, 1)).count_params() / 10
    with pytest.raises(ConfigError, match="width"):
        raxnet.build((32, 32, 1), width=0)


def test_output_prior_sets_the_untrained_prediction_without_changing_the_network():
    import math

    import numpy as np

    from strokeseg.models import raxnet

    upstream = raxnet.build((32, 32, 1), width=0.25)
    primed = raxnet.build((32, 32, 1), width=0.25, output_prior=0.01)
    assert primed.count_params() == upstream.count_params()
    np.testing.assert_allclose(np.asarray(primed.get_layer("head").bias), [math.log(0.01 / 0.99)], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(upstream.get_layer("head").bias), [0.0])   # upstream: zeros
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    # as in the first training step (batch statistics): the prior, not 0.5, is the starting point
    first_step = [float(np.mean(model(images, training=True))) for model in (primed, upstream)]
    assert first_step[0] < 0.1 and 0.2 < first_step[1] < 0.8
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError, match="output_prior"):
            raxnet.build((32, 32, 1), output_prior=bad)

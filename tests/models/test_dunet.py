"""D-UNet port: published parameter count and other slice counts.

The model contract (canonical count and forward pass, canvases, output, mixed precision, training,
input shapes) is checked for every registered model in test_model_contract.py.
"""
from __future__ import annotations

import pytest

from strokeseg.models import dunet

from model_checks import probability_map as _probabilities
from model_checks import tiny_batch as _batch


def test_canonical_input_and_parameter_count_are_published():
    assert dunet.CANONICAL_INPUT == (192, 192, 4)
    assert dunet.CANONICAL_PARAMS == 8_640_163


@pytest.mark.parametrize("slices", [1, 2, 3, 7])
def test_other_slice_counts_pool_the_depth_with_ceiling(slices):
    model = dunet.build((32, 32, slices))
    # the fusion convolutions read the pooled depth of the 3-D branch as channels
    assert model.get_layer("fuse2_squeeze_depth").output.shape[-1] == -(-slices // 2)
    assert model.get_layer("fuse3_squeeze_depth").output.shape[-1] == -(-slices // 4)
    _probabilities(model, _batch((32, 32, slices))[0])

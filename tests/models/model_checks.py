"""Helpers the model tests share: a tiny learnable batch and the probability-map check."""
from __future__ import annotations

import keras
import numpy as np


def tiny_batch(shape, n=2, seed=0, threshold=0.6):
    """Random images and a mask that depends on them (a learnable toy task)."""
    x = np.random.default_rng(seed).random((n, *shape)).astype("float32")
    return x, (x[..., :1] > threshold).astype("float32")


def probability_map(model, x):
    """``model(x)`` in inference mode is a float32 probability map of x's batch, height and width."""
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (*x.shape[:3], 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    return y

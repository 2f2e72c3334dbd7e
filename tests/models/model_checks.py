"""Checks every model's tests share: the output is a float32 probability map, also under a
mixed-precision policy, and a few training steps on a tiny batch lower the loss."""
from __future__ import annotations

import keras
import numpy as np


def tiny_batch(shape, n=2, seed=0, threshold=0.6):
    """Random images and a mask that depends on them (a learnable toy task)."""
    x = np.random.default_rng(seed).random((n, *shape)).astype("float32")
    return x, (x[..., :1] > threshold).astype("float32")


def probability_map(model, x):
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (*x.shape[:3], 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    return y


def assert_float32_under_mixed_precision(build, shape, float16_layer=None):
    """``build()`` under mixed_float16 computes in float16 but still outputs float32 probabilities."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build()
        if float16_layer is not None:
            assert model.get_layer(float16_layer).compute_dtype == "float16"
        probability_map(model, tiny_batch(shape, seed=1)[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def assert_training_lowers_loss(build, shape, n=2, steps=4, seed=0, threshold=0.6):
    keras.utils.set_random_seed(seed)
    x, y = tiny_batch(shape, n, seed, threshold)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  run_eagerly=True)  # tracing the step costs more than a few eager steps
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(steps)]
    assert losses[-1] < losses[0]

"""3-D U-Net and 3-D attention U-Net (docs/upstream-other-projects.md C.3): shapes, dtypes, input
checks, deep-supervision heads, width, saving. Tiny builds (width 0.125) keep the file fast."""
from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import attention_unet3d, load_model, unet3d

MODELS = {"unet3d": unet3d, "attention_unet3d": attention_unet3d}
TINY = dict(width=0.125)
PATCH = (16, 32, 48)  # anisotropic, so swapped axes would show


def _images(shape, n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def _numpy(outputs):
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in outputs]
    return keras.ops.convert_to_numpy(outputs)


@pytest.fixture(scope="module")
def deep_models():
    keras.utils.set_random_seed(0)
    return {name: module.build((*PATCH, 2), deep_supervision=True, **TINY) for name, module in MODELS.items()}


def test_constants():
    for module in MODELS.values():
        assert module.SIZE_MULTIPLE == 16
        # C.3's patch 112×112×80 of [DWI, ADC]: a multiple of 16 on every axis
        assert module.CANONICAL_INPUT == (112, 112, 80, 2)
    assert unet3d.CANONICAL_PARAMS == 90_300_289
    assert attention_unet3d.CANONICAL_PARAMS == 90_650_857


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels", [1, 2])
def test_output_is_a_float32_probability_map_under_mixed_precision(name, channels):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = MODELS[name].build((*PATCH, channels), **TINY)
        assert model.get_layer("enc1_conv1").compute_dtype == "float16"
        x = _images((*PATCH, channels))
        y = _numpy(model(x, training=False))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y.shape == (2, *PATCH, 1) and y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(16, 32, 40, 1), (16, 32, 48, 0), (32, 32, 2), (8, 16, 16, 16, 1)])
def test_bad_input_shapes_are_config_errors_naming_model_and_shape(name, shape):
    with pytest.raises(ConfigError, match=rf"^{name}: input shape.*{shape[0]}, {shape[1]}"):
        MODELS[name].build(shape, **TINY)


@pytest.mark.parametrize("name", MODELS)
def test_bad_options_are_config_errors(name):
    build = MODELS[name].build
    with pytest.raises(ConfigError, match=f"{name}: unknown option.*base_filters"):
        build((*PATCH, 1), base_filters=8)
    for option, value in (("width", 0), ("width", "1"), ("dropout", 1.0), ("deep_supervision", "yes")):
        with pytest.raises(ConfigError, match=f"{name}: {option}"):
            build((*PATCH, 1), **{option: value})


@pytest.mark.parametrize("name", MODELS)
def test_deep_supervision_heads_at_their_own_scale(name, deep_models):
    model = deep_models[name]
    assert model.output_names == unet3d.output_names(True)
    x = _images((*PATCH, 2), n=1)
    outputs = _numpy(model(x, training=False))
    assert len(outputs) == 4  # C.3: the main head and three auxiliary heads (dec2, dec3, dec4)
    for scale, y in enumerate(outputs):
        assert y.shape == (1, *(s // 2 ** scale for s in PATCH), 1) and y.dtype == np.float32
        assert np.all((y >= 0) & (y <= 1))


@pytest.mark.parametrize("name", MODELS)
def test_inference_build_has_one_output_and_takes_the_trained_weights(name, deep_models):
    """The default build is the deep-supervision build minus the auxiliary heads, layer for layer,
    so weights trained with deep supervision copy by name onto the saved inference model."""
    trained = deep_models[name]
    inference = MODELS[name].build((*PATCH, 2), **TINY)
    assert len(inference.outputs) == 1
    extra = {layer.name for layer in trained.layers} - {layer.name for layer in inference.layers}
    assert extra == {f"probabilities_scale{i}{suffix}" for i in (1, 2, 3) for suffix in ("", "_head")}
    for layer in inference.layers:
        layer.set_weights(trained.get_layer(layer.name).get_weights())
    x = _images((*PATCH, 2), n=1, seed=3)
    np.testing.assert_allclose(_numpy(inference(x)), _numpy(trained(x))[0], rtol=1e-5, atol=1e-6)


def test_attention_gates_on_every_skip():
    model = attention_unet3d.build((*PATCH, 1), **TINY)
    kinds = collections.Counter(type(layer).__name__ for layer in model.layers)
    assert kinds["Multiply"] == 4 and kinds["Concatenate"] == 4 and kinds["SpatialDropout3D"] == 2 * 9
    for level, filters in zip((1, 2, 3, 4), (8, 16, 32, 64)):  # 64 … 512 at width 1/8
        assert model.get_layer(f"dec{level}_gate_wx").filters == filters // 2  # F_int = out / 2
        assert model.get_layer(f"dec{level}_gate_coefficients").output.shape[-1] == 1
    assert model.get_layer("bridge_conv2").output.shape[1:] == (1, 2, 3, 128)
    plain = collections.Counter(type(layer).__name__ for layer in unet3d.build((*PATCH, 1), **TINY).layers)
    assert plain["Multiply"] == 0 and plain["Concatenate"] == 4


@pytest.mark.parametrize("name", MODELS)
def test_width_scales_the_filters(name):
    build = MODELS[name].build
    eighth, quarter = build((*PATCH, 2), width=0.125), build((*PATCH, 2), width=0.25)
    assert eighth.count_params() < quarter.count_params()
    assert eighth.get_layer("bridge_conv2").filters == 128 and quarter.get_layer("bridge_conv2").filters == 256
    assert build((*PATCH, 2), width=0.01).get_layer("enc1_conv1").filters == 1  # rounded, at least 1


@pytest.mark.parametrize(("name", "deep_supervision"), [("unet3d", False), ("attention_unet3d", True)])
def test_save_and_load_in_safe_mode(name, deep_supervision, tmp_path):
    keras.utils.set_random_seed(1)
    model = MODELS[name].build((*PATCH, 2), deep_supervision=deep_supervision, **TINY)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_model(path)  # safe mode, uncompiled
    x = _images((*PATCH, 2), n=1, seed=2)
    expected, got = _numpy(model(x)), _numpy(loaded(x))
    if not deep_supervision:
        expected, got = [expected], [got]
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)

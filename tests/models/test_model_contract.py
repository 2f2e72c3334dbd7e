"""The model contract, checked for every model in the registry (``strokeseg.models.model_names()``).

* The canonical build (``CANONICAL_INPUT``, default options) has ``CANONICAL_PARAMS`` parameters
  and outputs one channel at the input's height and width; H and W are multiples of
  ``SIZE_MULTIPLE``.
* On each study canvas (208×240, 240×208, 208×208, with the model's ``slice_channels``) it builds,
  and its parameter count does not depend on H and W.
* Where ``SPECS`` says so, a batch of one at full size (canonical input or study canvas) is a
  float32 probability map.
* A small build (H and W multiples of ``SIZE_MULTIPLE``) outputs a float32 probability map of the
  input's H×W, also under the mixed_float16 policy, and one training update on a tiny learnable
  batch lowers the loss.
* A bad input shape (H or W not a multiple of ``SIZE_MULTIPLE``, C = 0, not three dimensions) is a
  ``ConfigError`` that names the model, from the module's ``build`` and from ``build_model``.

Each per-model test file keeps only what is specific to its architecture. ``SPECS`` says how each
model is built here: cheap options where it has them, the training settings its check was tuned
with, and where a full-size forward pass runs. A model without an entry gets the defaults.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

from strokeseg.errors import ConfigError
from strokeseg.models import architecture, build_model, model_names, slice_channels

from model_checks import probability_map, tiny_batch

STUDY_CANVASES = ((208, 240), (240, 208), (208, 208))
CANONICAL = "canonical"
# Two eager steps, so one update: its loss is the second step's. Plain gradient descent, because a small
# enough step against the gradient must lower the loss wherever the gradients are right, and an eager SGD
# step costs about half an Adam step for these models (measured: X-Net 1.7 against 3.2 s on a CPU).
TRAINING = dict(n=2, steps=2, seed=0, threshold=0.6, optimizer="sgd")


@dataclass(frozen=True)
class Spec:
    options: dict = field(default_factory=dict)         # small build, mixed precision and training
    float16_layer: str | None = None                    # must compute in float16 under mixed_float16
    training: dict = field(default_factory=dict)        # overrides of TRAINING
    canvas_options: dict = field(default_factory=dict)  # options of the study-canvas builds
    full_size_forward: tuple = (CANONICAL,)             # CANONICAL and/or study canvases (H, W)


_TUNED = dict(n=4, seed=42, threshold=0.7)
SPECS = {
    # upstream width: the network the study trains is cheap enough at 32×32
    "raxnet": Spec(float16_layer="stem_conv", training=_TUNED),
    # a full-size forward pass costs 2-3 s on a CPU for these two: X-Net runs it on the axial
    # canvas only, CLCI-Net (36.8 M parameters) builds at full size but runs at small sizes only
    "xnet": Spec(full_size_forward=((208, 240),)),
    "clci": Spec(full_size_forward=()),
    "dunet": Spec(),
    # 96 M parameters at width 1: small builds at width 1/8 (partitions must divide the 2×2
    # bottleneck), the canvases at width 1/16, run on every canvas (the default SEA partitions
    # differ per canvas) instead of at the canonical input (a 4 s forward on a CPU). Its loss does not
    # fall in one SGD update at any rate tried (0.01 to 0.2); in one Adam update it does.
    "lcnn": Spec(options=dict(width=0.125, partitions=(2, 1)), training=dict(optimizer="adam"),
                 canvas_options=dict(width=0.0625), full_size_forward=STUDY_CANVASES),
    "unet": Spec(options=dict(base_filters=8), float16_layer="enc1_conv1", training=_TUNED),
    "resunet": Spec(float16_layer="dec1_conv1", training=dict(seed=42, threshold=0.7)),
    "attention_unet": Spec(options=dict(base_filters=8), float16_layer="enc1_conv1",
                           training=_TUNED),
}
NAMES = model_names(volumetric=False)   # the 3-D models: tests/models/test_unet3d.py


def _spec(name: str) -> Spec:
    return SPECS.get(name, Spec())


def test_specs_are_for_registered_models():
    assert set(SPECS) <= set(NAMES)


def _small(name: str) -> tuple[int, int, int]:
    """(2·SIZE_MULTIPLE, 2·SIZE_MULTIPLE, slice_channels): 32×32 for every model today."""
    multiple = architecture(name).SIZE_MULTIPLE
    return 2 * multiple, 2 * multiple, slice_channels(name)


def _runs_at_full_size(model, shape) -> None:
    """A batch of one at full size is a float32 probability map of the input's H×W."""
    probability_map(model, tiny_batch(shape, n=1)[0])


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape)


# ---------------------------------------------------------------- canonical build and canvases

@pytest.mark.parametrize("name", NAMES)
def test_canonical_build_has_the_canonical_parameter_count(name):
    module = architecture(name)
    height, width, _ = module.CANONICAL_INPUT
    assert height % module.SIZE_MULTIPLE == 0 and width % module.SIZE_MULTIPLE == 0
    model = build_model(name, module.CANONICAL_INPUT)
    assert model.count_params() == module.CANONICAL_PARAMS
    assert model.output_shape == (None, height, width, 1)
    if CANONICAL in _spec(name).full_size_forward:
        _runs_at_full_size(model, module.CANONICAL_INPUT)


@functools.cache
def _canvas_reference_count(name: str) -> int:
    """``CANONICAL_PARAMS``, or where the canvases differ from the canonical build in C or options
    the count of a build at the canonical H×W with the canvases' C and options."""
    module, spec = architecture(name), _spec(name)
    channels = slice_channels(name)
    if channels == module.CANONICAL_INPUT[2] and not spec.canvas_options:
        return module.CANONICAL_PARAMS
    reference = build_model(name, (*module.CANONICAL_INPUT[:2], channels), **spec.canvas_options)
    return reference.count_params()


@pytest.mark.parametrize("name, canvas", [(n, c) for n in NAMES for c in STUDY_CANVASES],
                         ids=[f"{n}-{_dims(c)}" for n in NAMES for c in STUDY_CANVASES])
def test_study_canvases_build_with_the_same_parameter_count(name, canvas):
    spec = _spec(name)
    shape = (*canvas, slice_channels(name))
    model = build_model(name, shape, **spec.canvas_options)
    assert model.output_shape == (None, *canvas, 1)
    assert model.count_params() == _canvas_reference_count(name)
    if canvas in spec.full_size_forward:
        _runs_at_full_size(model, shape)


# ---------------------------------------------------------------- small builds

@pytest.mark.parametrize("name", NAMES)
def test_output_stays_float32_under_mixed_precision(name):
    """Under mixed_float16 the model computes in float16 but still outputs float32 probabilities."""
    spec, shape = _spec(name), _small(name)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(name, shape, **spec.options)
        assert any(layer.compute_dtype == "float16" for layer in model.layers if layer.weights)
        if spec.float16_layer is not None:
            assert model.get_layer(spec.float16_layer).compute_dtype == "float16"
        probability_map(model, tiny_batch(shape, seed=1)[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", NAMES)
def test_small_build_outputs_a_probability_map_and_training_lowers_the_loss(name):
    """One small build serves both checks (building a large model dominates the cost of a forward
    pass at 32×32). The study canvases' builds check that H and W are not swapped."""
    spec, shape = _spec(name), _small(name)
    settings = {**TRAINING, **spec.training}
    keras.utils.set_random_seed(settings["seed"])
    x, y = tiny_batch(shape, settings["n"], settings["seed"], settings["threshold"])
    model = build_model(name, shape, **spec.options)
    assert model.output_shape == (None, *shape[:2], 1)
    probability_map(model, x)
    optimizer = keras.optimizers.Adam(1e-3) if settings["optimizer"] == "adam" else keras.optimizers.SGD(0.05)
    model.compile(optimizer=optimizer, loss="binary_crossentropy",
                  run_eagerly=True)  # tracing the step costs more than two eager steps
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(settings["steps"])]
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- bad input shapes

def _bad_shapes(name: str) -> list[tuple[tuple, str]]:
    """(shape, what the message must say besides the model's name)."""
    module = architecture(name)
    multiple, channels = module.SIZE_MULTIPLE, slice_channels(name)
    height, width = module.CANONICAL_INPUT[:2]
    small, half = 2 * multiple, multiple // 2
    misaligned = [(small - 2, small, channels), (small, half, channels),
                  (small, multiple + half, channels), (small, small + half, channels)]
    no_channels = [(small, small, 0)]
    for h, w in ((height, width), STUDY_CANVASES[0]):  # the canonical input and the axial canvas
        misaligned += [(h - half, w, channels), (h, w - half, channels)]
        no_channels.append((h, w, 0))
    misaligned = [s for s in misaligned if s[0] % multiple or s[1] % multiple]
    sized = f"multiples of {multiple}"
    shapes = [(s, sized) for s in misaligned + no_channels]
    shapes += [((small, small), ""), ((1, small, small, channels), "")]
    return list(dict.fromkeys(shapes))  # the canonical input may be the axial canvas


_BAD = [(name, shape, says) for name in NAMES for shape, says in _bad_shapes(name)]


@pytest.mark.parametrize("name, shape, says", _BAD,
                         ids=[f"{name}-{_dims(shape)}" for name, shape, _ in _BAD])
def test_bad_input_shape_is_a_config_error_naming_the_model(name, shape, says):
    pattern = rf"^{re.escape(name)}: .*{re.escape(says)}"
    with pytest.raises(ConfigError, match=pattern):
        architecture(name).build(shape)
    with pytest.raises(ConfigError, match=pattern):
        build_model(name, shape)

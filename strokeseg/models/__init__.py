"""The model zoo: one module per architecture, one registry.

Every architecture module defines ``build(input_shape, **options) -> keras.Model`` and the
constants ``CANONICAL_INPUT`` (the input shape of its published build), ``CANONICAL_PARAMS``
(``model.count_params()`` of that build: trainable weights plus batch-norm statistics) and
``SIZE_MULTIPLE`` (H and W must be multiples of it). Models are written with ``keras.ops`` only,
so they run on TensorFlow here and on JAX or PyTorch where those are the backend, and they output a
float32 sigmoid probability map of the input's height and width, also under mixed precision.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import keras

from strokeseg.errors import ConfigError

# registry name -> module under strokeseg.models
MODULES = {
    "raxnet": "raxnet",
    "xnet": "xnet",
    "clci": "clci",
    "dunet": "dunet",
    "lcnn": "lcnn",
    "unet": "unet",
    "resunet": "resunet",
    "attention_unet": "attention_unet",
}

# Adjacent slices a model reads as channels on our T1 data: D-UNet 4 (its 3-D branch), LCNN 3
# (its slice alignment); every other model one slice (U-Net's published 3 channels are MR
# sequences, which a T1-only cohort does not have).
SLICE_CHANNELS = {"dunet": 4, "lcnn": 3}


def slice_channels(name: str) -> int:
    architecture(name)  # unknown names fail here with the list of models
    return SLICE_CHANNELS.get(name, 1)


def model_names() -> list[str]:
    return list(MODULES)


def architecture(name: str) -> ModuleType:
    if name not in MODULES:
        raise ConfigError(f"unknown model {name!r}; choose one of {model_names()}")
    return importlib.import_module(f"strokeseg.models.{MODULES[name]}")


def check_input_shape(name: str, input_shape, multiple: int) -> tuple[int, int, int]:
    """(H, W, C) as ints, or a ConfigError naming the model: three dimensions, H and W multiples
    of ``multiple``, C >= 1. Every model's ``build`` calls it, so direct builds are checked too."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ConfigError(f"{name}: input shape must be (H, W, C), got {shape}")
    height, width, channels = (int(s) for s in shape)
    if height % multiple or width % multiple or channels < 1:
        raise ConfigError(f"{name}: input shape {shape} must have H and W multiples of {multiple} and C >= 1")
    return height, width, channels


def load_model(path) -> keras.Model:
    """A saved ``.keras`` model in safe mode (no arbitrary code runs), uncompiled. Every model module
    is imported first, so the custom layers it registers (X-Net, LCNN) resolve in a fresh process."""
    for name in MODULES:
        architecture(name)
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def build_model(name: str, input_shape: tuple[int, int, int], **options) -> keras.Model:
    """Build a registered model for inputs of shape (H, W, C)."""
    module = architecture(name)
    check_input_shape(name, input_shape, module.SIZE_MULTIPLE)
    return module.build(tuple(input_shape), **options)

"""The model zoo: one module per architecture, one registry.

Every architecture module defines ``build(input_shape, **options) -> keras.Model`` and the
constants ``CANONICAL_INPUT`` (the input shape of its published build), ``CANONICAL_PARAMS``
(``model.count_params()`` of that build: trainable weights plus batch-norm statistics) and
``SIZE_MULTIPLE`` (every spatial size must be a multiple of it). Models are written with
``keras.ops`` only, so they run on TensorFlow here and on JAX or PyTorch where those are the
backend, and they output a float32 sigmoid probability map of the input's spatial size, also under
mixed precision.

Two kinds of model: slice models read (H, W, C) slices of one plane; volume models
(:data:`VOLUME_MODELS`) read (D, H, W, M) patches of the whole volume, and the pipeline treats the
volume as their one "plane" (:data:`strokeseg.config.VOLUME`).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from strokeseg.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - the registry's names are read without importing Keras
    import keras

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
    "unet3d": "unet3d",
    "attention_unet3d": "attention_unet3d",
}
# Models that read 3-D patches (D, H, W, M) instead of slices; listed here, not read from the modules,
# so that asking costs no import of TensorFlow.
VOLUME_MODELS = ("unet3d", "attention_unet3d")

# Adjacent slices a model reads as channels on our T1 data: D-UNet 4 (its 3-D branch), LCNN 3
# (its slice alignment); every other model one slice (U-Net's published 3 channels are MR
# sequences, which a T1-only cohort does not have).
SLICE_CHANNELS = {"dunet": 4, "lcnn": 3}


def slice_channels(name: str) -> int:
    architecture(name)  # unknown names fail here with the list of models
    return SLICE_CHANNELS.get(name, 1)


def model_names(volumetric: bool | None = None) -> list[str]:
    """Every registered model, or only the volume models (True) or the slice models (False)."""
    return [n for n in MODULES if volumetric is None or (n in VOLUME_MODELS) == volumetric]


def is_volumetric(name: str) -> bool:
    """Whether ``name`` is a 3-D model (reads patches of the volume, trained as the "volume" plane)."""
    if name not in MODULES:
        raise ConfigError(f"unknown model {name!r}; choose one of {model_names()}")
    return name in VOLUME_MODELS


def selected_volume_models(config) -> list[str]:
    """The 3-D models a config trains (stage 08's model, stage 09's comparison models), in that order."""
    names = dict.fromkeys((config.training.model, *config.comparison.models))
    return [name for name in names if name in VOLUME_MODELS]


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
    import keras

    for name in MODULES:
        architecture(name)
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def build_model(name: str, input_shape: tuple[int, ...], **options) -> keras.Model:
    """Build a registered model for inputs of shape (H, W, C), or (D, H, W, M) for a volume model."""
    module = architecture(name)
    if is_volumetric(name):
        from strokeseg.models.unet3d import check_input_shape_3d

        check_input_shape_3d(name, input_shape, module.SIZE_MULTIPLE)
    else:
        check_input_shape(name, input_shape, module.SIZE_MULTIPLE)
    return module.build(tuple(input_shape), **options)

"""Each model's published loss and optimiser settings, as changes to ``config.training``.

Stage 09 trains every comparison model through the same stores, normalisation, batches, folds,
epoch budget, early stopping and evaluation code as RAX-Net (upstream's comparison did not:
``docs/upstream-raxnet.md`` §10, §14 items 17–18). What differs per model by default is only
what its authors published for the loss and the optimiser (``recipe="published"``); with
``recipe="raxnet"`` every model gets RAX-Net's (the ``training`` section as configured).

Sources: ``docs/upstream-raxnet.md`` §8 (RAX-Net), §10 table and §10.4 (X-Net, CLCI-Net, D-UNet);
``docs/upstream-other-projects.md`` A.4 (LCNN), B (ResNet-U-Net), C.4–C.5 (attention U-Nets, 2-D and 3-D),
D.4 (U-Net).
Deliberate departures, the same for every model: batch composition and size are the shared
16 lesion + 16 normal batches; epochs and patience are the protocol's, not each paper's;
per-epoch PyTorch schedulers become Keras per-step schedules over the same number of epochs.
"""
from __future__ import annotations

from dataclasses import replace

from strokeseg.config import Config, TrainingConfig
from strokeseg.errors import ConfigError
from strokeseg.models import model_names

# model -> TrainingConfig fields that its publication fixes (loss and optimiser only).
PUBLISHED: dict[str, dict[str, object]] = {
    # §8: (1 − Tversky) + class-balanced focal BCE; AdamW 1e-3, wd 0.004, ×0.9 per 100k steps.
    "raxnet": {"loss": "tversky_plus_focal", "loss_options": {}, "optimizer": "adamw", "learning_rate": 1e-3,
               "weight_decay": 0.004, "schedule": "exponential", "decay_steps": 100_000, "decay_rate": 0.9},
    # §10.4: BCE + Dice; Adam 1e-3; ReduceLROnPlateau ×0.2 after 3 epochs.
    "xnet": {"loss": "bce_dice", "loss_options": {}, "optimizer": "adam", "learning_rate": 1e-3,
             "schedule": "constant", "plateau_factor": 0.2, "plateau_patience": 3},
    # §10.4: soft Dice with squared denominators; Adam 1e-4 (honoured in its Keras 2.2; upstream's
    # comparison silently ran 1e-3, §10).
    "clci": {"loss": "soft_dice_squared", "loss_options": {}, "optimizer": "adam", "learning_rate": 1e-4,
             "schedule": "constant"},
    # §10.4: "Enhance Mixing Loss" (focal γ 1.1, α 0.48 − log soft Dice); SGD 1e-4.
    "dunet": {"loss": "dunet_mixing", "loss_options": {}, "optimizer": "sgd", "learning_rate": 1e-4,
              "momentum": 0.0, "schedule": "constant"},
    # A.4: 0.7·Dice + 0.3·CE plus the warmed-up alignment term; AdamW 1e-5, wd 1e-4, clip 0.1,
    # cosine warm restarts (T0 10 epochs, ×2, floor 1e-6).
    "lcnn": {"loss": "lcnn", "loss_options": {}, "optimizer": "adamw", "learning_rate": 1e-5,
             "weight_decay": 1e-4, "clipnorm": 0.1, "schedule": "cosine_restarts", "restart_epochs": 10,
             "min_learning_rate": 1e-6},
    # D.4: per-sample soft Dice (+1); Adam 1e-4; cosine annealing over the run.
    "unet": {"loss": "dice", "loss_options": {"per_sample": True}, "optimizer": "adam", "learning_rate": 1e-4,
             "schedule": "cosine", "min_learning_rate": 0.0},
    # B: BCE; AdamW 1e-4 (PyTorch's default weight decay 0.01); its plateau scheduler was never stepped.
    "resunet": {"loss": "binary_crossentropy", "loss_options": {}, "optimizer": "adamw", "learning_rate": 1e-4,
                "weight_decay": 0.01, "schedule": "constant"},
    # C.4: focal Tversky (1 − TI)^2 per sample; AdamW 1e-4, wd 2e-4. (C's gradient "boundary" term
    # belongs to its 3-D deep-supervision setup and is not ported.)
    "attention_unet": {"loss": "focal_tversky", "loss_options": {}, "optimizer": "adamw", "learning_rate": 1e-4,
                       "weight_decay": 2e-4, "schedule": "constant"},
    # C.4–C.5, the 3-D network as published: focal Tversky; AdamW 1e-4, wd 2e-4, gradient clip 1.0,
    # plateau ×0.5 after 10 epochs (on the inner-validation loss; C watched validation Dice). The
    # plain 3-D U-Net has no publication: C's recipe, so the gates are the only difference.
    "attention_unet3d": {"loss": "focal_tversky", "loss_options": {}, "optimizer": "adamw", "learning_rate": 1e-4,
                         "weight_decay": 2e-4, "clipnorm": 1.0, "schedule": "constant", "plateau_factor": 0.5,
                         "plateau_patience": 10},
}
PUBLISHED["unet3d"] = PUBLISHED["attention_unet3d"]

# Fields a recipe may set; everything else (epochs, patience, steps, augmentation, precision,
# planes, folds) is the protocol's and shared by all models.
RECIPE_FIELDS = ("loss", "loss_options", "optimizer", "learning_rate", "weight_decay", "momentum", "clipnorm",
                 "schedule", "decay_steps", "decay_rate", "restart_epochs", "min_learning_rate",
                 "plateau_factor", "plateau_patience")


def model_training(config: Config, model: str, recipe: str, max_epochs: int | None = None) -> TrainingConfig:
    """``config.training`` for ``model``: its published recipe, or RAX-Net's (the section as configured)."""
    if model not in model_names():
        raise ConfigError(f"unknown model {model!r}; choose one of {model_names()}")
    options = config.comparison.model_options.get(model, {})
    if not isinstance(options, dict):
        raise ConfigError(f"comparison.model_options[{model!r}] must be a JSON object, got {options!r}")
    training = replace(config.training, model=model, model_options=dict(options))
    if recipe == "published":
        # Reset the optimiser fields first, so a recipe never inherits RAX-Net's leftovers.
        defaults = {f: getattr(TrainingConfig(), f) for f in RECIPE_FIELDS}
        training = replace(training, **{**defaults, **PUBLISHED[model]})
    elif recipe != "raxnet":
        raise ConfigError(f"unknown recipe {recipe!r}; choose 'published' or 'raxnet'")
    if max_epochs is not None:
        training = replace(training, max_epochs=max_epochs)
    return training

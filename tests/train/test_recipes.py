"""Published recipes change only the loss and optimiser; the protocol's budget stays shared."""
from __future__ import annotations

import pytest

from strokeseg.config import load_profile
from strokeseg.errors import ConfigError
from strokeseg.models import model_names
from strokeseg.train.losses import get_loss
from strokeseg.train.recipes import PUBLISHED, RECIPE_FIELDS, model_training


def test_every_model_has_a_published_recipe_with_a_registered_loss():
    assert set(PUBLISHED) == set(model_names())
    for model, recipe in PUBLISHED.items():
        assert set(recipe) <= set(RECIPE_FIELDS), model
        get_loss(recipe["loss"], **recipe["loss_options"])


def test_published_recipe_replaces_optimiser_but_keeps_the_protocol():
    config = load_profile("paper", ["training.max_epochs=7", "training.patience=3", "training.clipnorm=5",
                                    "comparison.model_options={\"lcnn\": {\"width\": 0.125}}"])
    clci = model_training(config, "clci", "published", max_epochs=9)
    assert (clci.model, clci.loss, clci.optimizer, clci.learning_rate) == ("clci", "soft_dice_squared", "adam", 1e-4)
    assert clci.clipnorm == 0.0 and clci.schedule == "constant"     # RAX-Net's settings do not leak in
    assert clci.max_epochs == 9 and clci.patience == 3               # the shared budget
    assert model_training(config, "lcnn", "published").model_options == {"width": 0.125}
    xnet = model_training(config, "xnet", "raxnet")
    assert (xnet.loss, xnet.optimizer, xnet.learning_rate) == ("tversky_plus_focal", "adamw", 1e-3)
    assert xnet.clipnorm == 5 and xnet.max_epochs == 7


def test_unknown_model_or_recipe_is_a_config_error():
    config = load_profile("paper")
    with pytest.raises(ConfigError, match="unknown model"):
        model_training(config, "segformer", "published")
    with pytest.raises(ConfigError, match="recipe"):
        model_training(config, "xnet", "mine")


def test_training_config_is_validated():
    with pytest.raises(ConfigError, match="optimizer"):
        load_profile("paper", ["training.optimizer=rmsprop"])
    with pytest.raises(ConfigError, match="plateau"):
        load_profile("paper", ["training.plateau_factor=0.5"])        # needs a patience and a constant lr
    with pytest.raises(ConfigError, match="training.folds"):
        load_profile("paper", ["training.folds=[6]"])
    with pytest.raises(ConfigError, match="JSON object"):
        load_profile("paper", ["training.model_options=3"])

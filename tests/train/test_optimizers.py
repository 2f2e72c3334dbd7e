"""Learning-rate schedules and optimizers built from config.training."""
from __future__ import annotations

from dataclasses import replace

import keras
import pytest

from strokeseg.config import TrainingConfig
from strokeseg.train.optimizers import build_optimizer, learning_rate


def test_learning_rate_schedules():
    base = TrainingConfig()
    exp = learning_rate(base, steps_per_epoch=10)
    assert float(exp(100_000)) == pytest.approx(1e-3 * 0.9)
    cosine = learning_rate(replace(base, schedule="cosine", max_epochs=2, min_learning_rate=1e-4), 10)
    assert float(cosine(0)) == pytest.approx(1e-3) and float(cosine(20)) == pytest.approx(1e-4)
    restarts = learning_rate(replace(base, schedule="cosine_restarts", restart_epochs=1), 10)
    assert float(restarts(10)) == pytest.approx(1e-3)  # the restart after one epoch
    assert learning_rate(replace(base, schedule="constant"), 10) == 1e-3


def test_optimizers_follow_the_config():
    adamw = build_optimizer(TrainingConfig(), 10)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.004)
    sgd = build_optimizer(replace(TrainingConfig(), optimizer="sgd", momentum=0.9, clipnorm=0.1,
                                  schedule="constant"), 10)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == pytest.approx(0.9)
    assert sgd.clipnorm == pytest.approx(0.1)

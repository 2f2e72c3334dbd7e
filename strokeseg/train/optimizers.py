"""Optimizers and learning-rate schedules from ``config.training`` (Keras only, any backend).

Kept apart from strokeseg.train.loop, which needs TensorFlow for its tf.data input and strategies,
so that the same optimizer is built where only Keras runs (JAX on a GPU machine: the benchmarks).
Upstream RAX-Net (docs/upstream-raxnet.md §8): AdamW, β 0.9/0.999, ε 1e-7, weight decay 0.004,
``ExponentialDecay(lr, 100000, 0.9, staircase=False)``.
"""
from __future__ import annotations

import keras

from strokeseg.config import TrainingConfig


def learning_rate(training: TrainingConfig, steps_per_epoch: int):
    """A float (constant, adjustable on plateaus) or a per-step Keras schedule."""
    lr, floor = training.learning_rate, training.min_learning_rate / training.learning_rate
    schedules = keras.optimizers.schedules
    if training.schedule == "exponential":
        return schedules.ExponentialDecay(lr, training.decay_steps, training.decay_rate, staircase=False)
    if training.schedule == "cosine":
        return schedules.CosineDecay(lr, decay_steps=training.max_epochs * steps_per_epoch, alpha=floor)
    if training.schedule == "cosine_restarts":
        return schedules.CosineDecayRestarts(lr, first_decay_steps=training.restart_epochs * steps_per_epoch,
                                             t_mul=2.0, m_mul=1.0, alpha=floor)
    return lr


def build_optimizer(training: TrainingConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(training, steps_per_epoch)
    clip = {"clipnorm": training.clipnorm} if training.clipnorm > 0 else {}
    if training.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=training.weight_decay, beta_1=0.9, beta_2=0.999,
                                      epsilon=1e-7, **clip)
    if training.optimizer == "adam":
        return keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **clip)
    return keras.optimizers.SGD(lr, momentum=training.momentum, **clip)

"""tf.data pipelines over the prepared arrays.

Each epoch visits the batches of a role in the order ``batches.epoch_batch_order`` gives for that
epoch (a fresh seeded permutation, or upstream's fixed order), so an interrupted run can rebuild
exactly the epoch it stopped in. A training role of foreground-weighted plans instead draws every
slot of the epoch's batches with replacement from all its slots, in proportion to their weights
(``weighted_sampling.epoch_draw``, as stateless in (seed, epoch)). Batches are read from the
memory maps in parallel and prefetched; images arrive as float32 on the 0..255 scale (upstream's
input range), masks as float32 {0, 1}.

Parallelism and prefetch depth are fixed, with tf.data autotuning off: a read costs ~10 ms
against seconds per training step, so autotuning gains nothing, and its background thread made
``fit`` wait up to seconds (minutes under load) when releasing each epoch's iterator
(measured with bench/train_throughput.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from strokeseg.config import derive_seed
from strokeseg.data.prepared import PreparedSplit
from strokeseg.protocol.batches import epoch_batch_order
from strokeseg.protocol.weighted_sampling import epoch_draw

PARALLEL_READS = 2   # batches read (and augmented) concurrently
PREFETCH = 2         # batches ready ahead of the training step


def epoch_indices(n_batches: int, epoch: int, seed: int, fixed_order: bool = False, steps: int = 0,
                  replicas: int = 1) -> np.ndarray:
    """The batch indices visited in ``epoch``: the epoch's order, cut to ``steps × replicas``
    batches when ``steps`` > 0, then continued from its start (wrap-around) up to a multiple of
    ``replicas``, so every replica gets a whole batch at every step and no batch is dropped."""
    order = epoch_batch_order(n_batches, epoch, seed, fixed_order)
    if steps > 0:
        order = order[:steps * replicas]
    short = -len(order) % replicas
    return np.concatenate([order, np.resize(order, short)]) if short else order


def batch_dataset(split: PreparedSplit, epoch: int = 0, seed: int = 0, fixed_order: bool = False,
                  steps: int = 0, replicas: int = 1,
                  augment: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None = None,
                  sample: bool = False, replace: bool = True) -> tf.data.Dataset:
    """One epoch of (images (B, H, W, C), masks (B, H, W, 1)) float32 batches.

    ``augment(images, masks, seed_pair)`` is applied per batch with a stateless seed made of the
    epoch's seed and the batch's position in the epoch: geometry, intensity or both, as
    strokeseg.train.augmentation.batch_augmentation builds it (its intensity step gives slot b of
    the batch the seed words (epoch seed, position, b)).

    ``sample`` (training): when the split has weights, the epoch's batches (as many as
    :func:`epoch_indices` visits) are drawn slot by slot in proportion to them (without ``replace``:
    every slot once, in a fresh order); without weights, or without ``sample`` (validation,
    evaluation), the plan's batches are visited as they are."""
    order = epoch_indices(split.n_batches, epoch, seed, fixed_order, steps, replicas)
    weights = split.weights if sample else None
    image_shape, mask_shape = split.batch_shape
    epoch_seed = derive_seed(seed, "augment", epoch) % (2 ** 62)

    if weights is None:
        items = order.astype(np.int64)

        def read(index):
            return split.batch(int(index))
    else:
        items = epoch_draw(weights, len(order), weights.shape[1], epoch, seed, replace)   # (batches, B) slots

        def read(slots):
            return split.slots_at(slots)

    def to_float(position, item):
        x, y = tf.numpy_function(read, [item], (tf.as_dtype(split.dtype), tf.uint8))
        x = tf.cast(tf.ensure_shape(x, image_shape), tf.float32)
        y = tf.cast(tf.ensure_shape(y, mask_shape), tf.float32)
        if augment is not None:
            x, y = augment(x, y, tf.stack([tf.constant(epoch_seed, tf.int64), position]))
        return x, y

    positions = np.arange(len(items), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((positions, items))
    dataset = dataset.map(to_float, num_parallel_calls=PARALLEL_READS, deterministic=True).prefetch(PREFETCH)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)

"""tf.data pipelines over the prepared arrays.

Each epoch visits the batches of a role in the order ``batches.epoch_batch_order`` gives for that
epoch (a fresh seeded permutation, or upstream's fixed order), so an interrupted run can rebuild
exactly the epoch it stopped in. Batches are read from the memory maps in parallel and prefetched;
images arrive as float32 on the 0..255 scale (upstream's input range), masks as float32 {0, 1}.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from strokeseg.batches import epoch_batch_order
from strokeseg.prepared import PreparedSplit


def batch_dataset(split: PreparedSplit, epoch: int = 0, seed: int = 0,
                  fixed_order: bool = False) -> tf.data.Dataset:
    """One epoch of (images (B, H, W, C), masks (B, H, W, 1)) float32 batches."""
    order = epoch_batch_order(split.n_batches, epoch, seed, fixed_order).astype(np.int64)
    image_shape, mask_shape = split.batch_shape

    def read(index):
        return split.batch(int(index))

    def to_float(x, y):
        x = tf.ensure_shape(x, image_shape)
        y = tf.ensure_shape(y, mask_shape)
        return tf.cast(x, tf.float32), tf.cast(y, tf.float32)

    dataset = tf.data.Dataset.from_tensor_slices(order)
    dataset = dataset.map(lambda i: tf.numpy_function(read, [i], (tf.as_dtype(split.dtype), tf.uint8)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

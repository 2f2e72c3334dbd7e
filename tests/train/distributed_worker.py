"""One MultiWorkerMirroredStrategy worker, launched by tests/train/test_distribute.py (not a test itself).

Usage: TF_CONFIG=... python tests/train/distributed_worker.py OUT.npz

It trains a tiny conv segmentation model for one short epoch with ``model.fit`` and writes the
initial and final weights to OUT.npz, together with what the strategy reported and the
batches this worker was given. It uses the same order as the real training entry point:
precision, then the strategy (before any TF op), then model and compile inside the scope, with
the input built by ``global_batches``.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from strokeseg.train.distribute import choose_strategy, global_batches, set_precision, worker_info  # noqa: E402

BATCH = 4          # per-replica batch, as the prepared arrays store it
N_BATCHES = 6      # -> 3 global steps with 2 replicas
SHAPE = (16, 16, 1)


def read_batch(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch `index`: the same on every worker. Pixel (0, 0) of sample j holds index + j / 10."""
    rng = np.random.default_rng(index)
    images = rng.random((BATCH, *SHAPE), dtype=np.float32)
    masks = (images > 0.6).astype(np.uint8)
    images[:, 0, 0, 0] = index + np.arange(BATCH, dtype=np.float32) / 10
    return images, masks


def main(out_path: str) -> int:
    precision = set_precision("auto")          # no GPU in the test -> float32
    strategy = choose_strategy()               # first TF work in the process
    task_type, task_index, is_chief, n_workers = worker_info()

    import keras
    import tensorflow as tf

    # Seed differently on purpose: MWMS broadcasts worker 0's initial values, so the weights
    # must still agree.
    keras.utils.set_random_seed(100 + task_index)
    replicas = strategy.num_replicas_in_sync

    def batches() -> tf.data.Dataset:
        def to_float(x, y):
            x = tf.ensure_shape(x, (BATCH, *SHAPE))
            y = tf.ensure_shape(y, (BATCH, *SHAPE))
            return x, tf.cast(y, tf.float32)
        dataset = tf.data.Dataset.from_tensor_slices(np.arange(N_BATCHES, dtype=np.int64))
        dataset = dataset.map(lambda i: tf.numpy_function(lambda j: read_batch(int(j)), [i], (tf.float32, tf.uint8)))
        return global_batches(dataset.map(to_float), replicas)

    # What this worker's replica is given at each step (pixel (0, 0) of every sample).
    seen = []
    for images, _ in strategy.experimental_distribute_dataset(batches()):
        for local in strategy.experimental_local_results(images):
            seen.append(local.numpy()[:, 0, 0, 0])

    with strategy.scope():
        inputs = keras.Input(SHAPE)
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
        # synchronized=True: batch statistics and so the moving statistics agree across
        # replicas. A plain BatchNormalization leaves each worker with its own moving_mean and
        # moving_variance.
        x = keras.layers.BatchNormalization(synchronized=True)(x)
        x = keras.layers.Activation("relu")(x)
        outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(x)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")

    initial = [w.numpy().copy() for w in model.weights]
    history = model.fit(batches(), epochs=1, verbose=0)
    final = [w.numpy() for w in model.weights]

    arrays = {f"initial_{i}": a for i, a in enumerate(initial)}
    arrays.update({f"final_{i}": a for i, a in enumerate(final)})
    np.savez(out_path, **arrays, names=np.array([w.path for w in model.weights]),
             seen=np.array(seen), replicas=replicas, iterations=int(model.optimizer.iterations.numpy()),
             loss=history.history["loss"][-1], is_chief=is_chief, n_workers=n_workers,
             task=f"{task_type}:{task_index}", precision=precision,
             mwms=isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

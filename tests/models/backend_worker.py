"""Runs registry models, every loss and the training metrics on one Keras backend, in its own process
(a process can use only the backend it started with): ``python backend_worker.py FOLDER [MODEL ...]``,
with ``KERAS_BACKEND`` set. Used by tests/models/test_jax_backend.py, which runs it once on TensorFlow
and once on JAX and compares what each writes.

Per model (small builds): the TensorFlow run saves its weights (``<name>.weights.h5``) and a batch;
every run loads those weights (so both backends compute with the same numbers) and writes the forward
probabilities of the batch (``<name>_<backend>.npy``); the other backend's run then compiles the model
and takes two training steps with the model's published loss. Per loss: its value on fixed arrays; per
metric: its result after two updates. Everything is in ``results_<backend>.json``; a model that fails
is recorded with its error, so one fault does not hide the others. Imports nothing that needs
TensorFlow besides Keras itself when the backend is JAX (the models, losses and metrics are written
with ``keras.ops``).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import keras
import numpy as np

# Small builds (and cheap options) of every registry model: (input shape, build options).
SMALL = {
    "raxnet": ((32, 32, 1), {"width": 0.125}),
    "xnet": ((32, 32, 1), {}),
    "clci": ((32, 32, 1), {}),
    "dunet": ((32, 32, 4), {}),
    "lcnn": ((32, 32, 3), {"width": 0.125, "partitions": (2, 1)}),
    "unet": ((32, 32, 1), {"base_filters": 4}),
    "resunet": ((32, 32, 1), {}),
    "attention_unet": ((32, 32, 1), {"base_filters": 4}),
    "unet3d": ((16, 16, 16, 2), {"width": 0.0625}),
    "attention_unet3d": ((16, 16, 16, 2), {"width": 0.0625}),
}
BATCH = 2


def _batch(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(BATCH, *shape)).astype(np.float32)
    masks = (rng.random((BATCH, *shape[:-1], 1)) > 0.8).astype(np.float32)
    return images, masks


def run_model(name: str, folder: Path, first: bool) -> dict:
    from strokeseg.models import build_model
    from strokeseg.train.losses import get_loss
    from strokeseg.train.recipes import PUBLISHED

    shape, options = SMALL[name]
    keras.utils.set_random_seed(0)
    model = build_model(name, shape, **options)
    weights = folder / f"{name}.weights.h5"
    images, masks = _batch(shape)
    if first:
        model.save_weights(weights)
        np.save(folder / f"{name}_images.npy", images)
    model.load_weights(weights)
    np.save(folder / f"{name}_{keras.backend.backend()}.npy",
            np.asarray(model.predict_on_batch(np.load(folder / f"{name}_images.npy")), dtype=np.float32))
    if first:      # TensorFlow trains every model in the rest of the suite
        return {}
    loss = PUBLISHED[name]["loss"]
    # LCNN's alignment term enters through the training loop's penalty layer; here it trains on its
    # segmentation terms, a plain (y_true, y_pred) loss.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("dice" if loss == "lcnn" else loss))
    losses = [float(np.asarray(model.train_on_batch(images, masks))) for _ in range(2)]
    return {"train_losses": losses}


def run_losses() -> dict:
    from strokeseg.train.losses import LOSSES, get_loss

    rng = np.random.default_rng(1)
    y_true = (rng.random((2, 16, 16, 1)) > 0.7).astype(np.float32)
    y_pred = rng.uniform(0.01, 0.99, size=(2, 16, 16, 1)).astype(np.float32)
    return {name: float(np.asarray(get_loss(name)(y_true, y_pred))) for name in LOSSES if name != "lcnn"}


def run_metrics() -> dict:
    from strokeseg.train.metrics import training_metrics

    rng = np.random.default_rng(2)
    out = {}
    for metric in training_metrics():
        for _ in range(2):
            metric.update_state((rng.random((2, 8, 8, 1)) > 0.6).astype(np.float32),
                                rng.random((2, 8, 8, 1)).astype(np.float32))
        out[metric.name] = float(np.asarray(metric.result()))
    return out


def main(folder: Path, names: list[str]) -> None:
    first = keras.backend.backend() == "tensorflow"
    results = {"backend": keras.backend.backend(), "models": {}}
    for name in names:
        start = time.perf_counter()
        try:
            results["models"][name] = run_model(name, folder, first)
            results["models"][name]["seconds"] = round(time.perf_counter() - start, 2)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to report
            results["models"][name] = {"error": f"{exc.__class__.__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-3000:]}
    results["losses"] = run_losses()
    results["metrics"] = run_metrics()
    (folder / f"results_{keras.backend.backend()}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or list(SMALL))

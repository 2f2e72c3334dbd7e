"""A training run's logs beside its checkpoints: the progress figure and TensorBoard event files.

After every epoch (strokeseg.train.loop.train; only the chief worker writes):

- ``progress.png``: the history's loss, Dice, learning rate and epoch time
  (strokeseg.report.progress_figure), with or without TensorBoard;
- ``tensorboard/`` when ``training.tensorboard`` (``tensorboard --logdir <run folder>/tensorboard``): the
  epoch's history row as scalars in the layout of Keras' own TensorBoard callback (writers ``train`` and
  ``validation``, tags ``epoch_<metric>``, step = the epoch from 1), so that the training and
  inner-validation curves of a metric share one chart; and after epoch 1 and every
  ``training.overlay_every``-th epoch, the current model's predictions on ``training.overlay_count`` fixed
  inner-validation lesion examples: the centre input channel in grey, the truth's outline green, the
  prediction's (probability >= 0.5) outline red.

The LGG U-Net project logged the same (docs/upstream-other-projects.md D.4: training loss, validation loss
and Dice, learning rate; prediction overlays every 10 epochs, prediction red, truth green). A resumed run
opens new event files in the same folders and continues at its next epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import keras
import numpy as np
import pandas as pd
from scipy import ndimage

from strokeseg.data.prepared import PreparedSplit
from strokeseg.report.progress_figure import progress_figure

PROGRESS = "progress.png"
TENSORBOARD = "tensorboard"
OVERLAY_TAG = "inner_validation_overlays"
# TensorBoard tag -> history column, per writer (Keras' callback names: "epoch_" + the metric)
TRAIN_SCALARS = {"epoch_loss": "loss", "epoch_dice": "dice", "epoch_precision": "precision",
                 "epoch_recall": "recall", "epoch_learning_rate": "learning_rate", "epoch_seconds": "epoch_seconds"}
VALIDATION_SCALARS = {"epoch_loss": "val_loss", "epoch_dice": "val_dice", "epoch_precision": "val_precision",
                      "epoch_recall": "val_recall"}
GREEN, RED = (0, 255, 0), (255, 0, 0)


class RunLogs:
    """The logs of one run's folder (``spec`` is its strokeseg.train.loop.RunSpec)."""

    def __init__(self, folder: Path, spec):
        self.folder, self.spec = Path(folder), spec
        self.title = f"{spec.training.model}, {spec.plane}, test fold {spec.test_fold}"
        self._examples = None       # read on the first overlay epoch: the same examples every time
        self._writers = {}
        if spec.training.tensorboard:
            import tensorflow as tf

            self._writers = {name: tf.summary.create_file_writer(str(self.folder / TENSORBOARD / name))
                             for name in ("train", "validation")}

    def epoch_end(self, model: keras.Model, history: list[dict]) -> None:
        """After an epoch: ``history`` holds the run's rows so far, the last one this epoch's."""
        progress_figure(pd.DataFrame(history), self.folder / PROGRESS, self.title)
        if not self._writers:
            return
        import tensorflow as tf

        row = history[-1]
        epoch = int(row["epoch"])
        for name, tags in (("train", TRAIN_SCALARS), ("validation", VALIDATION_SCALARS)):
            with self._writers[name].as_default():
                for tag, column in tags.items():
                    tf.summary.scalar(tag, float(row[column]), step=epoch)
        training = self.spec.training
        if training.overlay_count and (epoch == 1 or epoch % training.overlay_every == 0):
            images = self._overlays(model)
            if len(images):
                with self._writers["validation"].as_default():
                    tf.summary.image(OVERLAY_TAG, images, step=epoch, max_outputs=training.overlay_count)
        for writer in self._writers.values():
            writer.flush()      # an epoch's events on disk before the next epoch (a run may be killed)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()

    def _overlays(self, model: keras.Model) -> np.ndarray:
        """(N, H, W, 3) uint8: the current model's predictions on the overlay examples."""
        if self._examples is None:
            count = self.spec.training.overlay_count
            if self.spec.volume is None:
                self._examples = slice_examples(self.spec.split("inner_val"), count)
            else:
                data = self.spec.volume.dataset("inner_val", 0, self.spec.data_seed,
                                                self.spec.training.patch_validation_steps)
                self._examples = volume_examples(data.as_numpy_iterator(), count)
        if not self._examples:
            return np.zeros((0, 1, 1, 3), np.uint8)
        # one call for every example (the same shape): a model called eagerly pays its overhead per call
        probabilities = model(np.stack([image for image, _, _ in self._examples]), training=False)
        if isinstance(probabilities, (list, tuple)):   # deep supervision: the full-resolution output first
            probabilities = probabilities[0]
        probabilities = keras.ops.convert_to_numpy(probabilities)
        drawn = []
        for (image, truth, depth), probability in zip(self._examples, probabilities):
            if depth is not None:           # a 3-D patch: its section at ``depth`` along the last spatial axis
                image, truth, probability = (a[..., depth, :] for a in (image, truth, probability))
            grey = image[..., centre_channel(image.shape[-1], self.spec.channels)]
            drawn.append(overlay_image(grey, truth[..., 0] > 0, probability[..., 0] >= 0.5))
        return np.stack(drawn)


def slice_examples(split: PreparedSplit, count: int) -> list[tuple[np.ndarray, np.ndarray, None]]:
    """The first ``count`` lesion slots of the split's batches, in order: (image (H, W, C) float32, mask
    (H, W, 1), None)."""
    examples, lesion = [], split.is_lesion
    for index in range(split.n_batches):
        slots = np.flatnonzero(lesion[index])[:count - len(examples)]
        if len(slots):
            images, masks = split.batch(index)
            examples += [(images[s].astype(np.float32), masks[s], None) for s in slots]
        if len(examples) >= count:
            break
    return examples


def volume_examples(batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int) -> list[tuple]:
    """The first ``count`` patches holding lesion voxels in ``batches`` of (images (B, X, Y, Z, M), masks
    (B, X, Y, Z, 1)): (image, mask, the index along the last spatial axis with the most lesion voxels)."""
    examples = []
    for images, masks in batches:
        for image, mask in zip(images, masks):
            per_depth = mask[..., 0].sum(axis=(0, 1))
            if per_depth.max() > 0:
                examples.append((image.astype(np.float32), mask, int(np.argmax(per_depth))))
            if len(examples) >= count:
                return examples
    return examples


def centre_channel(channels: int, slices: int) -> int:
    """The input channel of the centre slice's first image channel: input channel c·M + m holds image
    channel m of the c-th of ``slices`` adjacent slices, the centre slice being c = (slices - 1) // 2
    (strokeseg.data.prepared)."""
    return ((slices - 1) // 2) * (channels // slices)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 3 × 3 neighbour outside it (image edges count as outside)."""
    return mask & ~ndimage.binary_erosion(mask, np.ones((3, 3), bool))


def overlay_image(grey: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``grey`` (the 0..255 input scale) with the outline of the boolean ``truth`` in
    green and of ``prediction`` in red, drawn last, so red where the two outlines meet."""
    value = np.clip(np.nan_to_num(grey), 0, 255).astype(np.uint8)
    rgb = np.repeat(value[..., None], 3, axis=-1)
    rgb[outline(truth)] = GREEN
    rgb[outline(prediction)] = RED
    return rgb

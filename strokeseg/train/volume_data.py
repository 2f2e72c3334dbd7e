"""The data of one 3-D run: patch batches from stage 03's volume store for a test fold's roles.

A 3-D run uses the same subjects as the slice runs of its test fold (:func:`role_subjects`): it
trains on the training parts of the other folds and is selected on their inner-validation parts
(stage 05's ``inner_validation.csv``), and the test fold is only evaluated. What differs is the unit:
an epoch is ``training.patch_steps`` batches of ``training.patch_batch_size`` patches drawn by
:func:`strokeseg.train.patches.sample_batch` (a third of each batch centred on a lesion voxel), and
the inner-validation loss is measured on ``training.patch_validation_steps`` batches drawn the same
way from the inner-validation subjects with one fixed seed, so every epoch is scored on the same
patches (nnU-Net validates on 50 such batches per epoch).

Every batch is a function of (seed, epoch, step) only, so a resumed run reads exactly the batches
the uninterrupted run would have; augmentation (training batches only: the geometry of
:mod:`strokeseg.train.augmentation3d`, then the intensity transforms of
:mod:`strokeseg.train.intensity_augmentation`) is seeded by the same words, slot b of a batch by
(seed, epoch, step, b). Images arrive as float32 on the store's 0..255 scale (the
slice models' input range), masks as float32 {0, 1}, as (B, X, Y, Z, M) and (B, X, Y, Z, 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import TrainingConfig, derive_seed
from strokeseg.data.volume_stores import VolumeStore
from strokeseg.errors import StrokesegError
from strokeseg.protocol.splits import fold_parts
from strokeseg.train.augmentation3d import Augmentation3D, PatchAugmentation, augment_batch
from strokeseg.train.intensity_augmentation import IntensityAugmentation
from strokeseg.train.patches import batch_arrays, sample_batch

PATCH_MULTIPLE = 16        # four 2x2x2 poolings in the 3-D models
MAX_DEFAULT_PATCH = 128    # per axis, when the patch comes from the grid plan
# The 2-D path flips left-right only, because on registered anatomy other mirrors are not anatomy; the
# plan grid's first axis is x (left-right), so the 3-D path flips that axis alone, for a fair comparison.
FLIP_AXES = (0,)


def default_patch(shape, cap: int = MAX_DEFAULT_PATCH) -> tuple[int, int, int]:
    """The patch of a plan grid: each axis rounded up to a multiple of 16, at most ``cap`` (a volume
    smaller than its patch is zero-padded by the sampler and the sliding window). An ATLAS grid
    (197 x 233 x 189) gets 128^3; a 2 mm ISLES'22-like grid (112 x 112 x 73) gets 112 x 112 x 80, the
    ISLES'22 project's patch."""
    return tuple(min(-(-int(s) // PATCH_MULTIPLE) * PATCH_MULTIPLE, cap) for s in shape)  # type: ignore[return-value]


def run_patch(training: TrainingConfig, shape) -> tuple[int, int, int]:
    """``training.patch_size``, or the plan grid's :func:`default_patch`."""
    return tuple(int(p) for p in training.patch_size) if training.patch_size else default_patch(shape)


def role_subjects(folds: pd.DataFrame, inner: set[str], test_fold: int, n_folds: int, role: str) -> list[str]:
    """The subjects of one role of a test fold (:func:`strokeseg.protocol.splits.fold_parts`), sorted:
    a fold's inner-validation part is its subjects in ``inner``, its training part the others."""
    names = []
    for fold, part in fold_parts(test_fold, n_folds)[role]:
        members = folds.loc[folds["fold"] == fold, "subject_name"].astype(str)
        names += [n for n in members if (n in inner) == (part == "inner_val")]
    return sorted(names)


@dataclass(frozen=True)
class VolumeRunData:
    """Where a 3-D run's patches come from and how many it reads."""
    store: Path                               # stage 03's volume store
    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]
    patch: tuple[int, int, int]
    batch_size: int

    def open(self) -> VolumeStore:
        return VolumeStore(self.store)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (*self.patch, len(self.open().channels))

    def positions(self, role: str) -> list[int]:
        store = self.open()
        names = self.train_subjects if role == "train" else self.val_subjects
        if not names:
            raise StrokesegError(f"{self.store}: no {role} subjects for this run")
        return [store.position(name) for name in names]

    def dataset(self, role: str, epoch: int, seed: int, steps: int, replicas: int = 1,
                augment: PatchAugmentation | Augmentation3D | None = None, outputs: int = 1):
        """One epoch of ``steps × replicas`` per-replica batches (images, masks), the masks repeated once
        per model output (deep supervision: each output's loss downsamples its own copy)."""
        import tensorflow as tf

        store, positions = self.open(), self.positions(role)
        seed = derive_seed(seed, "patches", role) % (2 ** 62)
        epoch = epoch if role == "train" else 0      # validation: the same patches every epoch
        image_shape = (self.batch_size, *self.patch, len(store.channels))
        mask_shape = (self.batch_size, *self.patch, 1)

        def read(step):
            plan = sample_batch(store, positions, self.patch, self.batch_size, seed, epoch, int(step))
            images, masks = batch_arrays(store, plan)
            if augment is not None:
                images, masks = augment_batch(augment, images, masks, seed, epoch, int(step))
            return images, masks

        def load(step):
            x, y = tf.numpy_function(read, [step], (tf.float32, tf.float32))
            x, y = tf.ensure_shape(x, image_shape), tf.ensure_shape(y, mask_shape)
            return (x, (y,) * outputs) if outputs > 1 else (x, y)

        steps_total = np.arange(steps * replicas, dtype=np.int64)
        data = tf.data.Dataset.from_tensor_slices(steps_total).map(load, num_parallel_calls=2, deterministic=True)
        options = tf.data.Options()
        options.autotune.enabled = False   # as the slice pipeline (strokeseg.train.input_pipeline)
        return data.prefetch(2).with_options(options)


def augmentation(training: TrainingConfig) -> PatchAugmentation | None:
    """The 3-D augmentation of a run's training batches: the slice runs' flip, rotation and zoom
    settings when ``training.augment``, then their intensity transforms when
    ``training.intensity_augment``; None when neither."""
    spatial = (Augmentation3D(training.flip_probability, training.max_rotation_degrees, training.max_scaling,
                              flip_axes=FLIP_AXES) if training.augment else None)
    intensity = IntensityAugmentation.from_training(training) if training.intensity_augment else None
    if spatial is None and intensity is None:
        return None
    return PatchAugmentation(spatial, intensity)

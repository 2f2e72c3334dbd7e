"""Helpers shared by test modules of several packages (fixtures live in conftest.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from strokeseg.data.stores import SliceStore
from strokeseg.protocol.batches import compose_batches


class Recorder:
    """A predict function that records every call and delegates to ``fn``."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x):
        assert isinstance(x, np.ndarray) and not isinstance(x, np.memmap)
        assert x.dtype == np.float32 and x.ndim == 4
        self.calls.append(x.shape)
        return self.fn(x)

    @property
    def sizes(self):
        return [shape[0] for shape in self.calls]


PREPARED_LAYOUT = {(1, "train"): 0, (1, "inner_val"): 1, (2, "train"): 2, (2, "inner_val"): 3}


def plan_for(store: SliceStore, subject: str, seed: int) -> pd.DataFrame:
    index = store.index[store.index["subject_name"] == subject]
    lesions = index[index["lesion_pixels"] > 0].rename(columns={"lesion_pixels": "sum_voxel"})
    lesions = lesions.assign(slice_bin=(lesions["sum_voxel"] > 20).astype(int))
    normals = index[(index["lesion_pixels"] == 0) & (index["brain_pixels"] > 0)]
    plan, _ = compose_batches(lesions[["subject_name", "slice", "sum_voxel", "slice_bin"]],
                              normals[["subject_name", "slice"]], 2, 4, 4, seed=seed)
    return plan


def threshold_model(channels=1, level=199.5, input_size=(None, None), filters=1):
    """A fully convolutional 1×1 model: sigmoid(0.1 · (centre channel − level)), i.e. probability
    ≥ 0.5 exactly where the normalised intensity is above ``level``."""
    import keras

    image = keras.Input(shape=(*input_size, channels))
    conv = keras.layers.Conv2D(filters, 1, activation="sigmoid", dtype="float32")
    model = keras.Model(image, conv(image))
    kernel = np.zeros((1, 1, channels, filters), np.float32)
    kernel[0, 0, (channels - 1) // 2, :] = 0.1
    conv.set_weights([kernel, np.full(filters, -0.1 * level, np.float32)])
    return model


def save_models(folder, names_channels, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    for name, channels in names_channels.items():
        threshold_model(channels, **kwargs).save(folder / name)
    return folder


def write_atlas_stores(folder, subjects, convert=None, binarize=False):
    """Stage 03's stores of ATLAS-layout subjects (``strokeseg.data.cohort.discover``), on the fixed
    grid plan of the first subject's grid, as stage 01 plans an ATLAS cohort."""
    import nibabel as nib

    from strokeseg.config import PLANES, ConvertConfig
    from strokeseg.data.grid_plan import NativeGrid, make_plan
    from strokeseg.data.stores import write_stores

    first = nib.load(str(subjects[0].t1w))
    plan = make_plan([NativeGrid(first.shape[:3], first.affine)], "fixed", ("t1w",), ("t1",), PLANES)
    frame = pd.DataFrame({"subject_name": [s.subject for s in subjects], "t1w": [str(s.t1w) for s in subjects],
                          "mask": [str(s.mask) for s in subjects]})
    return write_stores(folder, frame, plan, convert or ConvertConfig(), binarize, 1, progress=False)


def train_killed_after_epoch_1(spec, monkeypatch) -> None:
    """Train ``spec`` as if killed right after epoch 1 was recorded, then rerun it to the end."""
    import pytest

    import strokeseg.train.loop as training

    save = training.RunState.save

    def save_then_die(self, folder):
        save(self, folder)
        if self.epochs_done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        training.train(spec, progress=False)
    assert list(pd.read_csv(spec.folder / "history.csv")["epoch"]) == [1]
    monkeypatch.setattr(training.RunState, "save", save)
    training.train(spec, progress=False)


def checkpoint_arrays(folder) -> list[np.ndarray]:
    """Every array of a run folder's latest checkpoint, in name order."""
    name = sorted(folder.glob("checkpoint_epoch*.npz"))[-1]
    with np.load(name) as data:
        return [data[k] for k in sorted(data.files)]

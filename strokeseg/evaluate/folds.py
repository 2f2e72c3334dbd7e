"""Evaluate one trained (plane, fold) model on its test fold: per slice, and per subject in 3-D.

A ``predict`` argument is any callable mapping float32 images ``(n, H, W, C)`` on the 0..255 scale
to float32 probabilities ``(n, H, W, 1)`` (the training stage passes
``lambda x: model.predict(x, batch_size=..., verbose=0)``); nothing here imports a deep-learning
framework, so the functions are tested with plain NumPy predictors.

Three views of the test fold:

- :func:`slice_evaluation`: every slot of the test role's prepared batches (both parts of the test
  fold, :func:`strokeseg.protocol.splits.fold_parts`) scored as one slice, repeated slots excluded so each
  slice counts once. Two score sets per slice: ``*_upstream`` with ``smooth=1`` (upstream's §10.1
  per-slice protocol, so an empty truth with an empty prediction scores 1.0 and a normal slice
  with any false positive scores ``1/(FP+1)``), and ``dice/precision/recall`` with ``smooth=0`` and
  :data:`strokeseg.evaluate.volume_metrics.EMPTY_RULE`. These are :func:`strokeseg.train.metrics.slice_scores`'s
  numbers (``pred > threshold``, ``truth > 0.5``), computed from the same counts with
  :func:`strokeseg.evaluate.volume_metrics.scores_from_counts`.
- :func:`plane_probability_volume`: all slices of one subject from the plane's slice store,
  predicted chunk by chunk, cropped back out of the canvas and restacked into the ``[x, y, z]``
  volume (reused by the tri-planar fusion).
- :func:`subject_evaluation`: single-plane 3-D ATLAS metrics per subject
  (:func:`strokeseg.evaluate.volume_metrics.subject_metrics` on ``probability > threshold``), on the
  store's grid, or with :class:`NativeTruths` (subjects resampled by a target-spacing grid plan) on
  each subject's own grid against its own mask, as stage 10 scores the hold-out.

- :func:`volume_evaluation`: the same metrics for a 3-D model, each test subject predicted whole by
  Gaussian-weighted sliding windows (:mod:`strokeseg.infer.sliding_window`) from the volume store.

Peak memory is one subject's volumes plus one chunk of input and output: inputs are read from
memory maps one chunk at a time and ``predict`` never sees more than ``batch_size`` slices.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from strokeseg.contracts import batches_csv
from strokeseg.data import planes
from strokeseg.data.prepared import PreparedSplit
from strokeseg.data.stores import SliceStore
from strokeseg.evaluate.volume_metrics import METRIC_KEYS, scores_from_counts, subject_metrics
from strokeseg.infer.inference import check_batch_size, predict_chunk, predict_slices
from strokeseg.protocol.splits import fold_parts

Predict = Callable[[np.ndarray], np.ndarray]

SLICE_COLUMNS = ("subject_name", "slice", "kind",
                 "dice_upstream", "precision_upstream", "recall_upstream",
                 "dice", "precision", "recall", "lesion_pixels", "predicted_pixels")
UPSTREAM_SMOOTH = 1.0


# ------------------------------------------------------------------------------------ prediction
# The chunk/crop core is shared with whole-volume inference (strokeseg.infer.inference, framework-free).
_check_batch_size = check_batch_size
_predict_chunk = predict_chunk


def predict_in_batches(predict: Predict, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities ``(n, H, W, 1)`` float32 of images ``(n, H, W, C)`` (uint8 or float, 0..255).

    ``predict`` is called on consecutive chunks of at most ``batch_size`` slices, each converted to
    float32 just before the call, so a memory-mapped input is read one chunk at a time.
    """
    batch_size = _check_batch_size(batch_size)
    if np.ndim(images) != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {np.shape(images)}")
    n, height, width = images.shape[:3]
    out = np.empty((n, height, width, 1), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        out[start:stop] = _predict_chunk(predict, images[start:stop])
    return out


# ------------------------------------------------------------------------------------ per slice
def role_plan(batches_dir: Path, plane: str, test_fold: int, n_folds: int,
              role: str = "test") -> pd.DataFrame:
    """The stage-05 batch plans of one role, in the slot order of :class:`PreparedSplit`.

    ``batches_dir`` is stage 05's folder; each part's plan is sorted by (batch, position) and the
    parts follow :func:`strokeseg.protocol.splits.fold_parts` (for the test role: the test fold's training
    part, then its inner-validation part).
    """
    from strokeseg.workdir import read_csv

    plans = [read_csv(Path(batches_dir) / batches_csv(plane, fold, part))
             .sort_values(["batch", "position"], kind="stable")
             for fold, part in fold_parts(test_fold, n_folds)[role]]
    return pd.concat(plans, ignore_index=True)


def _check_plan(plan: pd.DataFrame, is_lesion: np.ndarray, is_repeat: np.ndarray) -> None:
    if len(plan) != len(is_lesion):
        raise ValueError(f"the plan has {len(plan)} rows but the test batches hold {len(is_lesion)} "
                         f"slots; pass the test role's batch plans (both parts, sorted by batch and "
                         f"position)")
    missing = [c for c in ("subject_name", "slice") if c not in plan.columns]
    if missing:
        raise ValueError(f"the plan lacks column(s) {', '.join(missing)}")
    if "kind" in plan.columns and not np.array_equal(plan["kind"].eq("lesion").to_numpy(), is_lesion):
        raise ValueError("the plan's kinds differ from the prepared slots' lesion flags: "
                         "plan and batches are not in the same order")
    if "repeat" in plan.columns and not np.array_equal(plan["repeat"].to_numpy().astype(bool), is_repeat):
        raise ValueError("the plan's repeat flags differ from the prepared slots': "
                         "plan and batches are not in the same order")


def _count_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    up = scores_from_counts(tp, fp, fn, smooth=UPSTREAM_SMOOTH)
    ours = scores_from_counts(tp, fp, fn, smooth=0.0)
    return {"dice_upstream": up["dice"], "precision_upstream": up["precision"],
            "recall_upstream": up["recall"], **ours}


def slice_evaluation(predict: Predict, split: PreparedSplit, plan: pd.DataFrame | None,
                     batch_size: int, threshold: float = 0.5) -> pd.DataFrame:
    """One row per non-repeated slot of ``split``'s batches (columns :data:`SLICE_COLUMNS`).

    ``plan`` names each slot's subject and slice, in the split's slot order (see :func:`role_plan`);
    with ``None`` subject_name is "" and slice NaN. A pixel is predicted lesion when
    ``probability > threshold``; lesion_pixels / predicted_pixels count truth and prediction.
    """
    batch_size = _check_batch_size(batch_size)
    # The split's flags are (n_batches, batch); slots are counted flat, in batch order.
    is_lesion, is_repeat = np.ravel(split.is_lesion), np.ravel(split.is_repeat)
    if plan is not None:
        _check_plan(plan, is_lesion, is_repeat)
    rows: list[dict] = []
    slot = 0
    for b in range(split.n_batches):
        images, masks = split.batch(b)
        size = len(images)
        keep = np.flatnonzero(~is_repeat[slot:slot + size])
        if keep.size:
            prob = predict_in_batches(predict, images[keep], batch_size)[..., 0]
            pred = prob > threshold
            truth = masks[keep].reshape(pred.shape) > 0.5
            tp = np.count_nonzero(pred & truth, axis=(1, 2))
            n_pred = np.count_nonzero(pred, axis=(1, 2))
            n_truth = np.count_nonzero(truth, axis=(1, 2))
            for j, k in enumerate(keep):
                index = slot + int(k)
                if plan is None:
                    subject, slice_index = "", np.nan
                else:
                    subject = str(plan["subject_name"].iloc[index])
                    slice_index = int(plan["slice"].iloc[index])
                rows.append({"subject_name": subject, "slice": slice_index,
                             "kind": "lesion" if is_lesion[index] else "normal",
                             **_count_scores(int(tp[j]), int(n_pred[j] - tp[j]), int(n_truth[j] - tp[j])),
                             "lesion_pixels": int(n_truth[j]), "predicted_pixels": int(n_pred[j])})
        slot += size
    if slot != len(is_repeat):
        raise ValueError(f"the batches hold {slot} slots but the slot flags list {len(is_repeat)}")
    return pd.DataFrame(rows, columns=list(SLICE_COLUMNS))


# ------------------------------------------------------------------------------ per subject, 3-D
def _subject_rows(store: SliceStore, subject: str) -> np.ndarray:
    return store.rows([subject] * store.n_slices, np.arange(store.n_slices))


def plane_probability_volume(predict: Predict, store: SliceStore, subject: str, batch_size: int,
                             channels: int = 1) -> np.ndarray:
    """float32 probability volume ``[x, y, z]`` (shape ``store.geometry.volume_shape``) of one subject.

    Every slice of the subject is read from the store in chunks of ``batch_size`` (``channels``
    adjacent slices per input, as in training), predicted, cropped out of its canvas with
    ``store.canvas.crop`` and restacked with :func:`strokeseg.data.planes.from_stack`.
    """
    rows = _subject_rows(store, subject)
    stack = np.empty((len(rows),) + tuple(store.canvas.slice_shape), dtype=np.float32)
    predict_slices(predict, np.arange(len(rows)), lambda chunk: store.images_at(rows[chunk], channels=channels),
                   store.canvas, batch_size, stack)
    volume = planes.from_stack(stack, store.plane)
    _check_volume_shape(store, volume)
    return volume


def truth_volume(store: SliceStore, subject: str) -> np.ndarray:
    """uint8 {0, 1} lesion volume ``[x, y, z]`` of one subject, rebuilt from the store's masks."""
    stack = np.ascontiguousarray(store.canvas.crop(store.masks_at(_subject_rows(store, subject))))
    volume = planes.from_stack(stack, store.plane)
    _check_volume_shape(store, volume)
    return volume


def _check_volume_shape(store: SliceStore, volume: np.ndarray) -> None:
    if volume.shape != tuple(store.geometry.volume_shape):
        raise ValueError(f"rebuilt volume {volume.shape} differs from the store's grid "
                         f"{tuple(store.geometry.volume_shape)}")


def store_spacing(store: SliceStore) -> tuple[float, float, float]:
    """Voxel sizes of the store's grid: the grid plan's (mm, or voxels where the cohort's spacing is not
    known), or for stores written before grid plans the norms of the first three columns of its affine."""
    if store.geometry.raw.get("spacing") is not None:
        return tuple(float(s) for s in store.geometry.raw["spacing"])
    affine = np.asarray(store.geometry.raw["affine"], dtype=np.float64)
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


class NativeTruths:
    """Each subject's own mask and grid (``cohort.csv`` rows and the grid plan), to score a plan-grid
    prediction where the subject was acquired."""

    def __init__(self, cohort: pd.DataFrame, plan, binarize: bool = False):
        self.files = cohort.set_index("subject_name")
        self.plan = plan
        self.binarize = binarize

    def score(self, subject: str, prediction: np.ndarray, connectivity: int) -> dict:
        from strokeseg.data.grid_plan import NativeGrid
        from strokeseg.data.nifti import load_mask_image

        truth, image = load_mask_image(self.files.loc[subject, "mask"], binarize=self.binarize, allow_empty=True)
        native = NativeGrid(tuple(int(s) for s in truth.shape), np.asarray(image.affine, dtype=float))
        mask = self.plan.mask_to_native(prediction.astype(np.uint8), native)
        return subject_metrics(mask, truth, native.spacing, connectivity=connectivity)


def subject_evaluation(predict: Predict, store: SliceStore, subjects, batch_size: int,
                       channels: int = 1, threshold: float = 0.5, connectivity: int = 6,
                       native: NativeTruths | None = None) -> pd.DataFrame:
    """Single-plane 3-D metrics: one row per subject given (in order), ``subject_name`` followed by
    every key of :func:`strokeseg.evaluate.volume_metrics.subject_metrics` (``truth_voxels`` among them) on
    ``probability > threshold`` against the store's truth, or with ``native`` on the subject's own
    grid against its own mask. One subject's volumes at a time."""
    spacing = store_spacing(store)
    rows = []
    for subject in subjects:
        prob = plane_probability_volume(predict, store, subject, batch_size, channels)
        pred = prob > threshold
        del prob
        if native is not None:
            metrics = native.score(str(subject), pred, connectivity)
        else:
            metrics = subject_metrics(pred, truth_volume(store, subject), spacing, connectivity=connectivity)
        rows.append({"subject_name": str(subject), **metrics})
    return pd.DataFrame(rows, columns=["subject_name", *METRIC_KEYS])


def volume_evaluation(predict: Predict, store, subjects, patch, batch_size: int, step: float = 0.5,
                      threshold: float = 0.5, connectivity: int = 6,
                      native: NativeTruths | None = None) -> pd.DataFrame:
    """3-D metrics of a 3-D model, as :func:`subject_evaluation` gives them for a plane: ``predict`` maps
    float32 windows (n, x, y, z, M) on the 0..255 scale to probabilities (n, x, y, z, 1); every subject of
    ``store`` (a :class:`strokeseg.data.volume_stores.VolumeStore`) is predicted whole by sliding windows
    of ``patch`` and scored on the store's grid, or with ``native`` on its own grid."""
    from strokeseg.infer.sliding_window import sliding_window_probability

    spacing = tuple(float(s) for s in store.geometry["spacing"])
    rows = []
    for subject in subjects:
        images, truth = store.volume(store.position(str(subject)))
        probability = sliding_window_probability(predict, images.astype(np.float32), patch, batch_size, step)
        pred = probability > threshold
        del probability, images
        if native is not None:
            metrics = native.score(str(subject), pred, connectivity)
        else:
            metrics = subject_metrics(pred, truth, spacing, connectivity=connectivity)
        rows.append({"subject_name": str(subject), **metrics})
    return pd.DataFrame(rows, columns=["subject_name", *METRIC_KEYS])

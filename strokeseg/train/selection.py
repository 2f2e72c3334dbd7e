"""Model selection on the mean per-subject Dice of the inner-validation volumes (``training.selection``).

The LGG U-Net's rule (``docs/upstream-other-projects.md`` D.4): after every epoch each inner-validation
subject is predicted whole, thresholded, post-processed and scored by its Dice; the epoch's score is
the mean over subjects, and the best epoch the one with the highest score. Here:

- the subjects are those of the inner-validation parts the run selects on: stage 04's folds and
  stage 05's ``inner_validation.csv`` (:func:`strokeseg.train.volume_data.role_subjects`), the
  subjects whose batches give the inner-validation loss;
- a slice run predicts every slice of each subject in its plane from stage 03's store, as the
  test-fold evaluation does (:func:`strokeseg.evaluate.folds.plane_probability_volume`); a 3-D run
  predicts the subject's volume by its sliding windows (:mod:`strokeseg.infer.sliding_window`);
- a voxel is lesion when its probability is > 0.5, then ``postprocess.rule`` applies as at stage 10:
  "largest" keeps the largest 6-connected component (the LGG U-Net's own rule), "min_size" removes
  the components under ``postprocess.min_lesion_voxels``; "none" keeps every component, and so does
  "auto", whose size stage 10 chooses on these runs' predictions afterwards;
- Dice is :func:`strokeseg.evaluate.volume_metrics.dice`, 2TP/(|P| + |G|) and 1.0 when both are empty
  (the LGG U-Net adds 1e-6 to both terms, which moves a score by at most 1e-6 / (|P| + |G|)).

Volumes are scored on the store's grid (stage 08's test evaluation scores target-spacing cohorts on
each subject's own grid; selection needs only a consistent ranking of epochs, not resampling).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from strokeseg.config import PostprocessConfig
from strokeseg.contracts import BATCHES, CONVERT, CROSS_VALIDATION, FOLDS_CSV, INNER_VALIDATION_CSV
from strokeseg.data.stores import SliceStore
from strokeseg.errors import StrokesegError
from strokeseg.evaluate.folds import plane_probability_volume, truth_volume
from strokeseg.evaluate.volume_metrics import dice
from strokeseg.infer import postprocessing
from strokeseg.infer.sliding_window import sliding_window_probability
from strokeseg.train.volume_data import role_subjects
from strokeseg.workdir import read_csv

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from strokeseg.train.loop import RunSpec

SUBJECT_DICE = "subject_dice"
THRESHOLD = 0.5


def selection_postprocess(postprocess: PostprocessConfig) -> PostprocessConfig:
    """The post-processing the score applies: "largest" and "min_size" as configured, otherwise none."""
    if postprocess.rule == "largest":
        return PostprocessConfig("largest")
    if postprocess.rule == "min_size":
        return PostprocessConfig("min_size", postprocess.min_lesion_voxels)
    return PostprocessConfig()


def postprocessed(mask: np.ndarray, postprocess: PostprocessConfig) -> np.ndarray:
    """``mask > 0`` after :func:`selection_postprocess`'s rule (6-connected components)."""
    min_voxels, largest = postprocess.removal()
    return postprocessing.postprocess(mask, min_voxels, largest=largest, connectivity=6)


def subject_dice(probability: np.ndarray, truth: np.ndarray, postprocess: PostprocessConfig) -> float:
    """One subject's score: ``probability > 0.5``, post-processed, Dice'd against ``truth``."""
    return dice(postprocessed(np.asarray(probability) > THRESHOLD, postprocess), truth)


def inner_validation_subjects(spec: RunSpec) -> list[str]:
    """The run's inner-validation subjects, sorted (a 3-D run's data lists them already)."""
    if spec.volume is not None:
        subjects = list(spec.volume.val_subjects)
    else:
        workdir = _workdir(spec)
        folds = read_csv(workdir / CROSS_VALIDATION / FOLDS_CSV)
        inner = set(read_csv(workdir / BATCHES / INNER_VALIDATION_CSV)["subject_name"].astype(str))
        subjects = role_subjects(folds, inner, spec.test_fold, spec.n_folds, "inner_val")
    if not subjects:
        raise StrokesegError(f"{spec.folder}: no inner-validation subjects to score for training.selection="
                             f"{SUBJECT_DICE}")
    return subjects


def epoch_score(model: keras.Model, spec: RunSpec) -> float:
    """The mean per-subject Dice of the run's inner-validation subjects under ``model`` (inference mode)."""
    predict = _predictor(model, spec.training.eval_batch_size)
    scores = []
    if spec.volume is not None:
        store = spec.volume.open()
        for subject in inner_validation_subjects(spec):
            images, truth = store.volume(store.position(subject))
            probability = sliding_window_probability(predict, images.astype(np.float32), spec.volume.patch,
                                                     spec.training.patch_batch_size, spec.training.window_step)
            scores.append(subject_dice(probability, truth, spec.postprocess))
    else:
        store = SliceStore(_workdir(spec) / CONVERT / spec.plane)
        for subject in inner_validation_subjects(spec):
            # One predict call per subject (model.predict batches it): its per-call set-up is not paid
            # once per eval batch.
            probability = plane_probability_volume(predict, store, subject, store.n_slices, spec.channels)
            scores.append(subject_dice(probability, truth_volume(store, subject), spec.postprocess))
    return float(np.mean(scores))


def _predictor(model: keras.Model, batch_size: int):
    """``model.predict`` in inference mode on the full-resolution output (a deeply supervised model has
    one output per scale). ``predict`` rather than a plain call: it splits the batch over the
    replicas of the model's distribution strategy."""
    def predict(images: np.ndarray) -> np.ndarray:
        out = model.predict(images, batch_size=batch_size, verbose=0)
        return out[0] if isinstance(out, (list, tuple)) else out
    return predict


def _workdir(spec: RunSpec) -> Path:
    """The workdir of the run's stage-06 folder, where stages 03-05 are its siblings."""
    return Path(spec.prepared).parent

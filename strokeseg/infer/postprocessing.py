"""Post-processing of fused masks: removal of small connected components or keeping the largest one,
and the choice between them on cross-validation predictions (never on the subjects they are then
applied to).

Components are 6-connected by default, ATLAS's lesion-counting rule
(:func:`strokeseg.data.lesions.structure`). Keeping the largest 3-D component is the LGG U-Net's rule
(docs/upstream-other-projects.md D.4–D.5); it drops true multifocal stroke lesions, so it is an
option, chosen by ``auto`` only where it scores strictly better on cross-validation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd
from scipy import ndimage

from strokeseg.config import PLANES
from strokeseg.contracts import CROSS_VALIDATION, FOLDS_CSV, RUNS_CSV
from strokeseg.data import planes
from strokeseg.data.lesions import structure
from strokeseg.errors import StrokesegError

if TYPE_CHECKING:  # pragma: no cover
    from strokeseg.data.stores import SliceStore
    from strokeseg.infer.inference import PlanePredictor
    from strokeseg.infer.tri_planar import TriPlanarPredictor


LARGEST = "largest"     # the rule that keeps the largest component only (postprocess.rule)


def _labels(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of ``mask > 0`` and the size of each label (index 0 = background)."""
    binary = np.asarray(mask) > 0
    labels, n = ndimage.label(binary, structure=structure(binary.ndim, connectivity))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def remove_small_components(mask: np.ndarray, min_voxels: int, connectivity: int = 6) -> np.ndarray:
    """uint8 {0, 1} copy of ``mask > 0`` without the components of fewer than ``min_voxels`` voxels.

    ``min_voxels ≤ 1`` removes nothing. Voxels are those of the mask's grid (1 mm³ on the MNI grid).
    """
    binary = (np.asarray(mask) > 0)
    if min_voxels <= 1 or not binary.any():
        return binary.astype(np.uint8)
    labels, sizes = _labels(binary, connectivity)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels].astype(np.uint8)


def keep_largest_component(mask: np.ndarray, connectivity: int = 6) -> np.ndarray:
    """uint8 {0, 1} copy of ``mask > 0`` holding only its largest component; an empty mask stays empty.

    Ties go to the lowest label, the component whose first voxel comes first in C order, so that the
    result never depends on anything but the mask.
    """
    binary = np.asarray(mask) > 0
    if not binary.any():
        return binary.astype(np.uint8)
    labels, sizes = _labels(binary, connectivity)
    sizes[0] = 0                                # the background is never a component
    return (labels == int(np.argmax(sizes))).astype(np.uint8)   # argmax: the first of equal sizes


def postprocess(mask: np.ndarray, min_voxels: int = 0, largest: bool = False, connectivity: int = 6) -> np.ndarray:
    """uint8 {0, 1} ``mask > 0`` after the removal of components below ``min_voxels``, then, with
    ``largest``, all but the largest component."""
    kept = remove_small_components(mask, min_voxels, connectivity)
    return keep_largest_component(kept, connectivity) if largest else kept


def _case_components(prediction: np.ndarray, truth: np.ndarray, threshold: float,
                     connectivity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per predicted component: its size and its overlap with the truth; and the truth's size."""
    prediction = np.asarray(prediction)
    truth = np.asarray(truth) > 0
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    binary = prediction >= np.float32(threshold) if prediction.dtype.kind == "f" else prediction > 0
    labels, sizes = _labels(binary, connectivity)
    overlap = np.bincount(labels[truth], minlength=len(sizes))
    return sizes[1:], overlap[1:], int(np.count_nonzero(truth))


def component_size_scores(cases: Iterable[tuple[np.ndarray, np.ndarray]], candidates: Iterable[int],
                          threshold: float = 0.5, connectivity: int = 6) -> dict[int, float]:
    """Mean per-subject Dice after :func:`remove_small_components` for each candidate size.

    ``cases``: (prediction, truth) pairs; a float prediction is a (fused) probability taken as
    ``≥ threshold``, an integer/bool one a mask (``> 0``). Each case is labelled once; Dice follows
    :data:`strokeseg.evaluate.volume_metrics.EMPTY_RULE` (both empty → 1.0).
    """
    return _scores(cases, candidates, threshold, connectivity, largest=False)


def rule_scores(cases: Iterable[tuple[np.ndarray, np.ndarray]], candidates: Iterable[int],
                threshold: float = 0.5, connectivity: int = 6) -> dict[int | str, float]:
    """:func:`component_size_scores` plus the mean Dice of :func:`keep_largest_component`, keyed
    :data:`LARGEST`; the cases are streamed once."""
    return _scores(cases, candidates, threshold, connectivity, largest=True)


def _dice(tp: int, n_pred: int, n_truth: int) -> float:
    return 1.0 if n_pred + n_truth == 0 else 2.0 * tp / (n_pred + n_truth)


def _scores(cases, candidates, threshold: float, connectivity: int, largest: bool) -> dict[int | str, float]:
    sizes_list = [int(c) for c in candidates]
    if not sizes_list or any(c < 0 for c in sizes_list):
        raise ValueError(f"candidates must be a non-empty list of sizes >= 0, got {sizes_list}")
    totals = np.zeros(len(sizes_list) + largest, dtype=np.float64)
    n_cases = 0
    for prediction, truth in cases:
        sizes, overlap, n_truth = _case_components(prediction, truth, threshold, connectivity)
        for i, minimum in enumerate(sizes_list):
            kept = sizes >= minimum
            totals[i] += _dice(int(overlap[kept].sum()), int(sizes[kept].sum()), n_truth)
        if largest:   # argmax: ties go to the lowest label, as keep_largest_component's
            top = int(np.argmax(sizes)) if len(sizes) else None
            totals[-1] += _dice(0, 0, n_truth) if top is None else _dice(int(overlap[top]), int(sizes[top]), n_truth)
        n_cases += 1
    if n_cases == 0:
        raise ValueError("no cases to choose a component size from")
    keys: list[int | str] = [*sizes_list, LARGEST] if largest else sizes_list
    return {key: float(total / n_cases) for key, total in zip(keys, totals)}


def choose_min_component_size(cases: Iterable[tuple[np.ndarray, np.ndarray]], candidates: Iterable[int],
                              threshold: float = 0.5, connectivity: int = 6) -> int:
    """The candidate size maximising the mean per-subject Dice (ties → the smallest size).

    Meant for the cross-validation folds' predictions (out-of-fold volumes of the training
    subjects), never the hold-out: choosing the size on the subjects it is then evaluated on
    would leak the test set into the post-processing, as upstream's fold choice did (§14.6).
    """
    return _best(component_size_scores(cases, candidates, threshold, connectivity))


def _best(scores: dict[int | str, float]) -> int | str:
    """The size with the highest mean Dice, ties going to the smallest size; :data:`LARGEST` only where
    it scores strictly better than every size (the gentlest rule wins a tie)."""
    sizes = {size: score for size, score in scores.items() if size != LARGEST}
    best = max(sizes.values())
    if scores.get(LARGEST, -np.inf) > best:
        return LARGEST
    return min(size for size, score in sizes.items() if score == best)


# ------------------------------------------------------------- the size chosen on cross-validation
DEFAULT_CANDIDATES = (0, 5, 10, 20, 50, 100, 200, 500, 1000)


def postprocess_table(cases: Iterable[tuple[np.ndarray, np.ndarray]], candidates: Iterable[int],
                      connectivity: int = 6) -> tuple[pd.DataFrame, str, int]:
    """(table, rule, size): the mean Dice of every candidate size (rule ``min_size``) and of the
    largest component (rule ``largest``, no size), the chosen row marked, over ``cases`` streamed once;
    the choice is :func:`_best`'s. ``rule, size`` is ``("min_size", N)`` or ``("largest", 0)``."""
    sizes = [int(c) for c in candidates]
    count = 0

    def counted():
        nonlocal count
        for case in cases:
            count += 1
            yield case

    scores = rule_scores(counted(), sizes, connectivity=connectivity)
    chosen = _best(scores)
    table = pd.DataFrame({"rule": ["min_size"] * len(sizes) + [LARGEST],
                          "min_lesion_voxels": pd.array([*sizes, None], dtype="Int64"),
                          "mean_dice": [scores[key] for key in [*sizes, LARGEST]], "n_subjects": count,
                          "chosen": [key == chosen for key in [*sizes, LARGEST]]})
    return table, *((LARGEST, 0) if chosen == LARGEST else ("min_size", int(chosen)))


@dataclass(frozen=True)
class CrossValidationRuns:
    """Where out-of-fold predictions come from: stage 08's runs of one model, stage 03's slice
    stores (the cross-validation subjects' normalised volumes and truths) and stage 04's folds."""
    training_dir: Path
    convert_dir: Path
    runs: pd.DataFrame          # 08_training/runs.csv rows of the model
    folds: pd.DataFrame         # 04_cross_validation/folds.csv
    planes: tuple[str, ...] = PLANES   # the study's planes

    def common_folds(self) -> list[int]:
        """Folds trained for every plane: only they give out-of-fold fused predictions."""
        per_plane = [set(self.runs.loc[self.runs["plane"] == plane, "fold"].astype(int)) for plane in self.planes]
        return sorted(set.intersection(*per_plane))

    def subjects(self) -> pd.DataFrame:
        """(subject_name, fold) of every test subject of the common folds, by fold then name."""
        common = self.common_folds()
        if not common:
            raise StrokesegError(f"{self.training_dir / RUNS_CSV}: no fold was trained for all three planes, "
                                 "so the auto post-processing has no out-of-fold fused predictions; give a size "
                                 "or --largest-component instead")
        used = self.folds[self.folds["fold"].astype(int).isin(common)][["subject_name", "fold"]]
        used = used.sort_values(["fold", "subject_name"], kind="stable").reset_index(drop=True)
        if used.empty:
            raise StrokesegError(f"folds {common} have no subjects in {CROSS_VALIDATION}/{FOLDS_CSV}")
        return used

    def model_file(self, plane: str, fold: int) -> Path:
        rows = self.runs[(self.runs["plane"] == plane) & (self.runs["fold"].astype(int) == int(fold))]
        return self.training_dir / str(rows["model_file"].iloc[0])


def out_of_fold_cases(source: CrossValidationRuns, used: pd.DataFrame, template: TriPlanarPredictor,
                      loaded: dict[tuple[str, int], PlanePredictor] | None = None,
                      progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fused mask, truth) of each cross-validation subject, predicted by the fold-k models of its own
    test fold k and fused with ``template``'s normalisation and settings (no component removal),
    cropped to their union bounding box (component sizes and Dice are unchanged by the crop); one
    subject's volumes at a time. ``loaded``: predictors already built, keyed by (plane, fold)."""
    from tqdm import tqdm

    from strokeseg.data.stores import SliceStore
    from strokeseg.evaluate.folds import truth_volume
    from strokeseg.infer.inference import load_model, plane_predictors
    from strokeseg.infer.tri_planar import TriPlanarPredictor

    settings = template.settings.replace(min_lesion_voxels=0, largest_component=False)
    stores = {plane: SliceStore(source.convert_dir / plane) for plane in source.planes}
    loaded = loaded or {}
    with tqdm(total=len(used), desc="10 fusion (cross-validation)", unit="subject", disable=not progress,
              leave=False) as bar:
        for fold, group in used.groupby("fold", sort=True):
            # one fold's models at a time; a predictor already built (the hold-out's) is reused
            predictors = {plane: loaded[(plane, int(fold))] if (plane, int(fold)) in loaded else plane_predictors(
                {plane: [load_model(source.model_file(plane, int(fold)))]}, template.batch_size)[plane]
                for plane in source.planes}
            fold_predictor = TriPlanarPredictor(predictors, template.convert, settings, template.batch_size,
                                                kinds=template.kinds)
            for subject in group["subject_name"]:
                probabilities = {plane: _store_probability(stores[plane], subject, fold_predictor)
                                 for plane in source.planes}
                fused = fold_predictor.mask(probabilities)
                del probabilities
                yield _crop_pair(fused, truth_volume(stores[source.planes[0]], subject))
                bar.update(1)


def _store_probability(store: SliceStore, subject: str, predictor: TriPlanarPredictor) -> np.ndarray:
    """One plane's probability volume of a cross-validation subject from its stage-03 store: the
    stored (normalised) slices are put back into a volume and predicted exactly as a hold-out volume
    (flip TTA included)."""
    from strokeseg.infer.inference import per_slice

    rows = store.rows([subject] * store.n_slices, np.arange(store.n_slices))
    images = store.images_at(rows, channels=1)                      # (n, H, W, M)
    volumes = [np.ascontiguousarray(planes.from_stack(store.canvas.crop(images[..., m]), store.plane))
               for m in range(images.shape[-1])]
    volume = volumes[0] if len(volumes) == 1 else np.stack(volumes)
    # Stored volumes are normalised already (each channel by its kind); slice_max: re-normalising the
    # stored slices of their own plane gives them back (each slice's maximum is already 255).
    normalized = None if per_slice(predictor.convert, predictor.kinds) else volume
    return predictor.plane_probability(store.plane, volume, normalized)


def _crop_pair(mask: np.ndarray, truth: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    union = (np.asarray(mask) > 0) | (np.asarray(truth) > 0)
    if not union.any():
        return np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8)
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + 1 + margin) for i in np.nonzero(union))
    return np.array(mask[box], dtype=np.uint8), np.array(truth[box], dtype=np.uint8)

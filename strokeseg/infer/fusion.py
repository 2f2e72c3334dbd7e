"""Tri-planar fusion of per-plane probability volumes, and connected-component post-processing.

Inputs are float32 probability volumes ``[x, y, z]`` of one subject, one per plane (keys are
plane names; any number of planes ≥ 1, all of one shape). Rules (:data:`FUSION_RULES`):

- ``mean`` (default, upstream's, reference/upstream-raxnet.md §11.2): the plain average of the
  planes' probabilities, lesion where ``mean ≥ threshold`` (upstream's code uses ≥; its README
  says >). This is soft averaging, not a vote, although the preprint calls it majority voting.
- ``majority``: hard voting, lesion where more than half of the planes have
  ``probability > threshold`` (2 of 3; each plane's own binary mask uses the strict > that the
  single-plane evaluations use).
- ``weighted_mean``: ``Σ w·p / Σ w ≥ threshold`` with one non-negative weight per plane.

The mean is accumulated in float32 in the dict's order (axial, sagittal, coronal from
:data:`strokeseg.config.PLANES`), so ``(a + s + c) / 3`` is rounded exactly as upstream's NumPy
sum of float32 arrays.

Post-processing: :func:`remove_small_components` drops connected components (6-connectivity by
default, the ATLAS counting rule, :func:`strokeseg.data.lesions.structure`) smaller than a size in
voxels; :func:`choose_min_component_size` picks that size from cross-validation predictions.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from strokeseg.data.lesions import structure

FUSION_RULES = ("mean", "majority", "weighted_mean")


# ------------------------------------------------------------------------------------ fusion
def _check_probabilities(probabilities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not probabilities:
        raise ValueError("fusion needs at least one probability volume")
    arrays = {name: np.asarray(p) for name, p in probabilities.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"probability volumes differ in shape: {shapes}")
    return arrays


def _check_rule(rule: str, weights) -> None:
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {FUSION_RULES}")
    if weights is not None and rule != "weighted_mean":
        raise ValueError(f"weights are only used by the weighted_mean rule, not by {rule!r}")


def _weights(names: Sequence[str], weights: dict[str, float] | None) -> dict[str, float]:
    if weights is None:
        raise ValueError("the weighted_mean rule needs weights, one per plane")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"weighted_mean: missing weight(s) for {', '.join(missing)}")
    chosen = {n: float(weights[n]) for n in names}
    if any(not np.isfinite(w) or w < 0 for w in chosen.values()):
        raise ValueError(f"weighted_mean: weights must be finite and >= 0, got {chosen}")
    if sum(chosen.values()) <= 0:
        raise ValueError("weighted_mean: the weights sum to 0")
    return chosen


def fused_probability(probabilities: dict[str, np.ndarray], rule: str = "mean",
                      weights: dict[str, float] | None = None) -> np.ndarray:
    """The fused float32 probability map: the weighted mean for ``weighted_mean``, else the plain
    mean (also for ``majority``, whose mask comes from votes; the map is what is saved)."""
    _check_rule(rule, weights)
    arrays = _check_probabilities(probabilities)
    names = list(arrays)
    w = _weights(names, weights) if rule == "weighted_mean" else {n: 1.0 for n in names}
    total = np.float32(sum(w.values()))
    out = np.zeros(next(iter(arrays.values())).shape, dtype=np.float32)
    for name in names:
        if w[name] == 1.0:
            out += arrays[name]                          # upstream's plain float32 sum
        elif w[name] != 0.0:
            out += np.float32(w[name]) * np.asarray(arrays[name], dtype=np.float32)
    out /= total
    return out


def fuse(probabilities: dict[str, np.ndarray], rule: str = "mean", threshold: float = 0.5,
         weights: dict[str, float] | None = None) -> np.ndarray:
    """uint8 {0, 1} lesion mask from the planes' probabilities under ``rule`` (module docstring)."""
    _check_rule(rule, weights)
    arrays = _check_probabilities(probabilities)
    threshold = np.float32(threshold)
    if rule == "majority":
        votes = np.zeros(next(iter(arrays.values())).shape, dtype=np.uint8)
        for p in arrays.values():
            votes += p > threshold
        return (2 * votes.astype(np.uint16) > len(arrays)).astype(np.uint8)
    return (fused_probability(arrays, rule, weights) >= threshold).astype(np.uint8)


# ----------------------------------------------------------------------------- post-processing
def _labels(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of ``mask > 0`` and the size of each label (index 0 = background)."""
    binary = np.asarray(mask) > 0
    labels, n = ndimage.label(binary, structure=structure(binary.ndim, connectivity))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def fused_mask(probabilities: dict[str, np.ndarray], rule: str = "mean", threshold: float = 0.5,
               weights: dict[str, float] | None = None, min_voxels: int = 0, connectivity: int = 6) -> np.ndarray:
    """:func:`fuse`, then :func:`remove_small_components` when ``min_voxels`` > 1."""
    mask = fuse(probabilities, rule, threshold, weights)
    return remove_small_components(mask, min_voxels, connectivity) if min_voxels > 1 else mask


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
    sizes_list = [int(c) for c in candidates]
    if not sizes_list or any(c < 0 for c in sizes_list):
        raise ValueError(f"candidates must be a non-empty list of sizes >= 0, got {sizes_list}")
    totals = np.zeros(len(sizes_list), dtype=np.float64)
    n_cases = 0
    for prediction, truth in cases:
        sizes, overlap, n_truth = _case_components(prediction, truth, threshold, connectivity)
        for i, minimum in enumerate(sizes_list):
            kept = sizes >= minimum
            tp, n_pred = int(overlap[kept].sum()), int(sizes[kept].sum())
            totals[i] += 1.0 if n_pred + n_truth == 0 else 2.0 * tp / (n_pred + n_truth)
        n_cases += 1
    if n_cases == 0:
        raise ValueError("no cases to choose a component size from")
    return {size: float(total / n_cases) for size, total in zip(sizes_list, totals)}


def choose_min_component_size(cases: Iterable[tuple[np.ndarray, np.ndarray]], candidates: Iterable[int],
                              threshold: float = 0.5, connectivity: int = 6) -> int:
    """The candidate size maximising the mean per-subject Dice (ties → the smallest size).

    Meant for the cross-validation folds' predictions (out-of-fold volumes of the training
    subjects), never the hold-out: choosing the size on the subjects it is then evaluated on
    would leak the test set into the post-processing, as upstream's fold choice did (§14.6).
    """
    scores = component_size_scores(cases, candidates, threshold, connectivity)
    best = max(scores.values())
    return min(size for size, score in scores.items() if score == best)

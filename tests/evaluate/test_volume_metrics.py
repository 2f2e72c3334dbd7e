"""Per-subject 3-D metrics on hand-made volumes with hand-computed answers (strokeseg.evaluate.volume_metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from strokeseg.evaluate import volume_metrics as ev

SHAPE = (12, 10, 8)


def vol(*voxels, shape=SHAPE):
    mask = np.zeros(shape, dtype=np.uint8)
    for v in voxels:
        mask[v] = 1
    return mask


EMPTY = vol()


# ------------------------------------------------------------------------- overlap scores
def test_dice_precision_recall_by_hand():
    pred = vol((1, 1, 1), (1, 1, 2))                 # |P| = 2
    truth = vol((1, 1, 2), (5, 5, 5), (6, 5, 5))     # |G| = 3, TP = 1
    assert ev.dice(pred, truth) == pytest.approx(2 / 5)
    assert ev.precision(pred, truth) == pytest.approx(1 / 2)
    assert ev.recall(pred, truth) == pytest.approx(1 / 3)


@pytest.mark.parametrize("pred, truth, expected", [
    (EMPTY, EMPTY, 1.0),                       # ATLAS: both empty -> 1
    (EMPTY, vol((2, 2, 2)), 0.0),              # missed lesion
    (vol((2, 2, 2)), EMPTY, 0.0),              # lesion where there is none
])
def test_empty_rule(pred, truth, expected):
    assert ev.dice(pred, truth) == expected
    assert ev.precision(pred, truth) == expected
    assert ev.recall(pred, truth) == expected


def test_scores_from_counts_smoothing():
    # a normal slice with 3 false-positive pixels: upstream's +1 gives Dice 1/(n+1), recall 1
    assert ev.scores_from_counts(0, 3, 0, smooth=1.0) == {"dice": 0.25, "precision": 0.25, "recall": 1.0}
    assert ev.scores_from_counts(0, 3, 0) == {"dice": 0.0, "precision": 0.0, "recall": 0.0}
    assert ev.scores_from_counts(0, 0, 0, smooth=1.0) == {"dice": 1.0, "precision": 1.0, "recall": 1.0}
    assert ev.scores_from_counts(0, 0, 0) == {"dice": 1.0, "precision": 1.0, "recall": 1.0}
    smoothed = ev.scores_from_counts(2, 1, 3, smooth=1.0)
    assert smoothed == pytest.approx({"dice": 5 / 9, "precision": 3 / 4, "recall": 3 / 6})


# ------------------------------------------------------------------------------- volumes
def test_volume_difference_voxels_and_ml():
    pred = vol((1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 4))
    truth = vol((1, 1, 1))
    assert ev.volume_difference(pred, truth) == 3
    assert ev.voxel_volume_ml((2.0, 1.5, 1.0)) == pytest.approx(0.003)
    m = ev.subject_metrics(pred, truth, (2.0, 1.5, 1.0))
    assert m["volume_difference_voxels"] == 3
    assert m["volume_difference_ml"] == pytest.approx(0.009)
    assert m["pred_volume_ml"] == pytest.approx(0.012) and m["truth_volume_ml"] == pytest.approx(0.003)


# ----------------------------------------------------------------------- lesion counting
def test_connectivity_6_vs_26():
    corner = vol((3, 3, 3), (4, 4, 4))      # touch at a corner only: 2 lesions at 6, 1 at 26
    edge = vol((3, 3, 3), (4, 4, 3))        # touch along an edge: 2 at 6, 1 at 18 and 26
    block = vol((3, 3, 3))
    assert ev.lesion_count_difference(block, corner) == 1
    assert ev.lesion_count_difference(block, corner, connectivity=26) == 0
    assert ev.lesion_count_difference(block, edge, connectivity=18) == 0
    m6, m26 = (ev.subject_metrics(block, corner, (1, 1, 1), connectivity=c) for c in (6, 26))
    assert (m6["truth_lesions"], m26["truth_lesions"]) == (2, 1)
    # at 6-connectivity the untouched corner voxel is a missed lesion: F1 = 1 / (1 + 1/2)
    assert m6["lesionwise_f1"] == pytest.approx(2 / 3) and m26["lesionwise_f1"] == 1.0
    assert (m6["connectivity"], m26["connectivity"]) == (6, 26)
    with pytest.raises(ValueError, match="connectivity"):
        ev.lesionwise_f1(block, corner, connectivity=8)


def test_lesionwise_f1_atlas_rule():
    a, b, c = [(0, 0, 0), (0, 0, 1)], [(5, 0, 0)], [(5, 2, 0)]
    truth = vol(*a, *b, *c)                                  # 3 truth lesions
    pred = vol((0, 0, 1),                                    # 1 voxel of A -> A detected
               (5, 0, 0), (5, 1, 0), (5, 2, 0),              # one component over B and C -> both detected
               (10, 8, 6))                                   # touches nothing -> FP
    # TP = 3, FP = 1, FN = 0 -> F1 = 3 / (3 + 1/2)
    assert ev.lesionwise_f1(pred, truth) == pytest.approx(6 / 7)
    m = ev.subject_metrics(pred, truth, (1, 1, 1))
    assert (m["detected_lesions"], m["false_positive_lesions"], m["missed_lesions"]) == (3, 1, 0)
    assert (m["pred_lesions"], m["truth_lesions"], m["lesion_count_difference"]) == (3, 3, 0)
    # a missed lesion: F1 = 1 / (1 + 1/2)
    assert ev.lesionwise_f1(vol((0, 0, 0)), vol((0, 0, 0), (9, 9, 7))) == pytest.approx(2 / 3)


@pytest.mark.parametrize("pred, truth, f1, count", [
    (EMPTY, EMPTY, 1.0, 0),
    (EMPTY, vol((1, 1, 1), (8, 8, 6)), 0.0, 2),
    (vol((1, 1, 1)), EMPTY, 0.0, 1),
])
def test_lesion_metrics_empty(pred, truth, f1, count):
    assert ev.lesionwise_f1(pred, truth) == f1
    assert ev.lesion_count_difference(pred, truth) == count


# ------------------------------------------------------------------------------------ HD95
def cube(start, shape=SHAPE):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(s, s + 3) for s in start)] = 1
    return mask


def test_hd95_shifted_cubes_anisotropic():
    # Two 3x3x3 cubes, one voxel apart along axis 0. Pooled surface distances (by hand): 32 zeros,
    # 2 one-voxel steps along y (1 mm), 18 steps along x (2 mm at spacing 2) -> 95th percentile = 2 mm.
    truth, pred = cube((2, 2, 2)), cube((3, 2, 2))
    assert ev.hd95(pred, truth, (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert ev.hd95(pred, truth, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert ev.hd95(pred, truth, (0.5, 3.0, 3.0)) == pytest.approx(0.5)   # every step is now along x


def test_hd95_pooled_not_max_of_directions():
    # P = {a, b}, G = {a}, b 4 voxels from a along z at 2.5 mm: distances P->G [0, 10], G->P [0].
    # Pooled [0, 0, 10] -> 95th percentile 0.9 * 10 = 9 (a max of per-direction percentiles gives 9.5).
    pred, truth = vol((1, 1, 1), (1, 1, 5)), vol((1, 1, 1))
    assert ev.hd95(pred, truth, (1.0, 1.0, 2.5)) == pytest.approx(9.0)
    assert ev.hd95(truth, pred, (1.0, 1.0, 2.5)) == pytest.approx(9.0)   # symmetric


def test_hd95_empty_cases():
    assert ev.hd95(EMPTY, EMPTY, (1, 1, 1)) == 0.0
    assert math.isnan(ev.hd95(EMPTY, vol((1, 1, 1)), (1, 1, 1)))
    assert math.isnan(ev.hd95(vol((1, 1, 1)), EMPTY, (1, 1, 1)))


def reference_hd95(pred, truth, spacing):
    """The named definition written the slow way: full-volume erosion and distance transforms."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))
    sp, st = surface(pred > 0), surface(truth > 0)
    d = np.concatenate([ndimage.distance_transform_edt(~st, sampling=spacing)[sp],
                        ndimage.distance_transform_edt(~sp, sampling=spacing)[st]])
    return np.percentile(d, 95)


def test_hd95_matches_full_volume_edt_on_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(3):
        pred = ndimage.binary_dilation(rng.random((20, 18, 16)) > 0.995, iterations=2)
        truth = ndimage.binary_dilation(rng.random((20, 18, 16)) > 0.995, iterations=2)
        pred[0, :3, :3] = truth[-1, -2:, -1] = True          # masks touching the volume border
        spacing = (0.9, 1.3, 2.2)
        assert ev.hd95(pred, truth, spacing) == pytest.approx(reference_hd95(pred, truth, spacing))


# ---------------------------------------------------------------------------- all at once
def test_subject_metrics_keys_and_values():
    pred = vol((1, 1, 1), (1, 1, 2))
    truth = vol((1, 1, 2), (1, 1, 3), (8, 8, 6))
    m = ev.subject_metrics(np.asfortranarray(pred), truth.astype(bool), (1.0, 1.0, 2.0))
    assert tuple(m) == ev.METRIC_KEYS
    assert (m["dice"], m["precision"], m["recall"]) == pytest.approx((2 / 5, 1 / 2, 1 / 3))
    assert (m["pred_voxels"], m["truth_voxels"], m["volume_difference_voxels"]) == (2, 3, 1)
    assert m["lesion_count_difference"] == 1 and m["lesionwise_f1"] == pytest.approx(2 / 3)
    assert m["hd95_mm"] == pytest.approx(reference_hd95(pred, truth, (1.0, 1.0, 2.0)))


def test_subject_metrics_both_empty():
    m = ev.subject_metrics(EMPTY, EMPTY, (1, 1, 1))
    assert tuple(m) == ev.METRIC_KEYS
    assert (m["dice"], m["precision"], m["recall"], m["lesionwise_f1"], m["hd95_mm"]) == (1.0,) * 4 + (0.0,)
    assert m["volume_difference_voxels"] == m["lesion_count_difference"] == m["pred_lesions"] == 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shape"):
        ev.subject_metrics(vol(), np.zeros((3, 3, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        ev.subject_metrics(vol(), vol(), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        ev.hd95(vol((1, 1, 1)), vol((1, 1, 1)), (1, 0, 1))

"""Test-fold evaluation with plain NumPy predictors on a tiny store written here (no Keras model)."""
import shutil
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.config import PLANES, ConvertConfig
from strokeseg.contracts import batches_csv
from strokeseg.data import planes
from strokeseg.data.cohort import discover
from strokeseg.data.prepared import PreparedSplit, part_dir, write_prepared
from strokeseg.data.stores import SliceStore
from strokeseg.evaluate.folds import (
    SLICE_COLUMNS,
    plane_probability_volume,
    predict_in_batches,
    role_plan,
    slice_evaluation,
    store_spacing,
    subject_evaluation,
    truth_volume,
)
from strokeseg.evaluate.volume_metrics import METRIC_KEYS

from conftest import write_tiny_cohort
from helpers import Recorder, plan_for, write_atlas_stores

BATCH = 8  # slots per prepared batch: 4 lesion + 4 normal


def zeros(x):
    return np.zeros(x.shape[:3] + (1,), np.float32)


def ones(x):
    return np.ones(x.shape[:3] + (1,), np.float32)


def centre_channel(x):
    return x[..., (x.shape[-1] - 1) // 2, None] / np.float32(255)


def by_call_order(truths):
    """A 'perfect' predictor: returns the next len(x) truth canvases, in call order."""
    state = {"at": 0}

    def predict(x):
        start = state["at"]
        state["at"] += len(x)
        assert state["at"] <= len(truths)
        return truths[start:state["at"]].reshape(x.shape[:3] + (1,)).astype(np.float32)

    return predict


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    """Stores of 3 tiny subjects; test fold 1 of 1 = subject 0 (train part) + subject 1 (inner_val)."""
    root = tmp_path_factory.mktemp("fold_evaluation")
    write_tiny_cohort(root / "cohort", 3, seed=7)
    subjects = discover(root / "cohort")
    write_atlas_stores(root / "stores", subjects, ConvertConfig())
    store = SliceStore(root / "stores" / "axial")
    plans = []
    for i, part in enumerate(("train", "inner_val")):
        plan = plan_for(store, subjects[i].subject, seed=i)
        out = part_dir(root / "prepared", "axial", 1)
        out.mkdir(parents=True, exist_ok=True)
        write_prepared(store, plan, (1,), out, part)
        csv = root / "batches" / batches_csv("axial", 1, part)
        csv.parent.mkdir(parents=True, exist_ok=True)
        plan.to_csv(csv, index=False)
        plans.append(plan.sort_values(["batch", "position"]))
    split = PreparedSplit(root / "prepared", "axial", test_fold=1, role="test", n_folds=1)
    plan = pd.concat(plans, ignore_index=True)
    assert split.is_repeat.any() and not split.is_repeat.all()   # the exclusion is exercised
    return SimpleNamespace(root=root, subjects=subjects, split=split, plan=plan)


def store_of(fold, plane):
    return SliceStore(fold.root / "stores" / plane)


# --------------------------------------------------------------------------- predict_in_batches
def test_chunks_never_exceed_the_batch_size_and_equal_one_shot(tmp_path):
    images = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(11, 6, 5, 3))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    images = np.load(tmp_path / "x.npy", mmap_mode="r")

    def fn(x):
        return (x.mean(axis=-1, keepdims=True) / 255.0).astype(np.float32)

    recorder = Recorder(fn)
    out = predict_in_batches(recorder, images, batch_size=4)
    assert recorder.sizes == [4, 4, 3]
    assert out.shape == (11, 6, 5, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out, fn(np.asarray(images, dtype=np.float32)))
    assert predict_in_batches(Recorder(fn), images, batch_size=64).shape == (11, 6, 5, 1)


def test_bad_batch_size_and_bad_prediction_shapes_are_errors():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        predict_in_batches(zeros, images, 0)
    with pytest.raises(ValueError, match="predict returned shape"):
        predict_in_batches(lambda x: np.zeros((len(x), 4, 4, 2), np.float32), images, 2)
    # (n, H, W) is accepted and given its channel axis.
    assert predict_in_batches(lambda x: x[..., 0], images, 2).shape == (3, 4, 4, 1)


# --------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("plane", PLANES)
def test_probability_volume_rebuilds_the_normalised_image_exactly(fold, plane):
    store = store_of(fold, plane)
    subject = fold.subjects[2].subject
    recorder = Recorder(centre_channel)
    volume = plane_probability_volume(recorder, store, subject, batch_size=5, channels=3)
    assert volume.shape == tuple(store.geometry.volume_shape) == (20, 24, 18)
    assert volume.dtype == np.float32
    assert max(recorder.sizes) <= 5 and sum(recorder.sizes) == store.n_slices
    assert all(shape[1:] == store.canvas.shape + (3,) for shape in recorder.calls)
    rows = store.rows([subject] * store.n_slices, np.arange(store.n_slices))
    expected = planes.from_stack(store.canvas.crop(store.images_at(rows)[..., 0]), plane)
    np.testing.assert_array_equal(volume, expected.astype(np.float32) / np.float32(255))
    assert volume.max() == 1.0 and np.count_nonzero(volume) > 0


@pytest.mark.parametrize("plane", PLANES)
def test_truth_volume_is_the_mask_file(fold, plane):
    store = store_of(fold, plane)
    for subject in fold.subjects:
        truth = truth_volume(store, subject.subject)
        assert truth.dtype == np.uint8
        np.testing.assert_array_equal(truth, np.asanyarray(nib.load(subject.mask).dataobj))


def test_spacing_is_the_affines_column_norms(fold):
    assert store_spacing(store_of(fold, "axial")) == (2.0, 2.0, 2.0)
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.0, 2.0, 3.0])
    fake = SimpleNamespace(geometry=SimpleNamespace(raw={"affine": affine.tolist()}))
    np.testing.assert_allclose(store_spacing(fake), (1.0, 2.0, 3.0))


# --------------------------------------------------------------------------- per slice
def test_zero_prediction_scores_by_hand_and_repeats_are_excluded(fold):
    recorder = Recorder(zeros)
    table = slice_evaluation(recorder, fold.split, fold.plan, batch_size=3)
    assert list(table.columns) == list(SLICE_COLUMNS)
    assert max(recorder.sizes) <= 3
    kept = ~fold.split.is_repeat.ravel()
    assert sum(recorder.sizes) == len(table) == kept.sum()        # repeated slots are not even predicted
    assert not table.duplicated(["subject_name", "slice"]).any()  # each slice counts once
    expected = fold.plan[kept].reset_index(drop=True)
    assert table["subject_name"].tolist() == expected["subject_name"].tolist()
    assert table["slice"].tolist() == expected["slice"].tolist()
    assert table["kind"].tolist() == expected["kind"].tolist()
    index = store_of(fold, "axial").index.set_index(["subject_name", "slice"])["lesion_pixels"]
    pairs = zip(table["subject_name"], table["slice"])
    assert table["lesion_pixels"].tolist() == [index[pair] for pair in pairs]
    assert (table["predicted_pixels"] == 0).all()

    normal, lesion = table[table["kind"] == "normal"], table[table["kind"] == "lesion"]
    assert len(normal) and len(lesion)
    assert (normal["lesion_pixels"] == 0).all() and (lesion["lesion_pixels"] > 0).all()
    score_columns = ["dice_upstream", "precision_upstream", "recall_upstream", "dice", "precision", "recall"]
    assert (normal[score_columns] == 1.0).all().all()              # both empty: 1.0 either way
    n = lesion["lesion_pixels"].to_numpy(dtype=float)
    np.testing.assert_allclose(lesion["dice_upstream"], 1 / (n + 1))   # (2·0 + 1) / (0 + n + 1)
    np.testing.assert_allclose(lesion["recall_upstream"], 1 / (n + 1))  # (0 + 1) / (0 + n + 1)
    assert (lesion["precision_upstream"] == 1.0).all()                  # (0 + 1) / (0 + 1)
    assert (lesion[["dice", "precision", "recall"]] == 0.0).all().all()


def test_constant_prediction_scores_by_hand(fold):
    table = slice_evaluation(ones, fold.split, fold.plan, batch_size=32)
    area = float(np.prod(store_of(fold, "axial").canvas.shape))
    assert (table["predicted_pixels"] == area).all()
    normal, lesion = table[table["kind"] == "normal"], table[table["kind"] == "lesion"]
    np.testing.assert_allclose(normal["dice_upstream"], 1 / (area + 1))
    np.testing.assert_allclose(normal["precision_upstream"], 1 / (area + 1))
    assert (normal["recall_upstream"] == 1.0).all()
    assert (normal[["dice", "precision", "recall"]] == 0.0).all().all()   # not both empty
    n = lesion["lesion_pixels"].to_numpy(dtype=float)
    np.testing.assert_allclose(lesion["dice_upstream"], (2 * n + 1) / (n + area + 1))
    np.testing.assert_allclose(lesion["precision_upstream"], (n + 1) / (area + 1))
    np.testing.assert_allclose(lesion["dice"], 2 * n / (n + area))
    np.testing.assert_allclose(lesion["precision"], n / area)
    assert (lesion[["recall_upstream", "recall"]] == 1.0).all().all()


def test_perfect_prediction_and_plan_free_tables(fold):
    split, kept = fold.split, ~fold.split.is_repeat.ravel()
    truths = np.concatenate([split.batch(b)[1] for b in range(split.n_batches)])[kept]
    table = slice_evaluation(by_call_order(truths), split, None, batch_size=5)
    assert len(table) == kept.sum()
    assert (table[["dice_upstream", "dice", "precision", "recall"]] == 1.0).all().all()
    assert (table["predicted_pixels"] == table["lesion_pixels"]).all()
    assert (table["subject_name"] == "").all() and table["slice"].isna().all()
    assert table["kind"].tolist() == np.where(split.is_lesion.ravel()[kept], "lesion", "normal").tolist()


def test_plan_must_match_the_slots(fold):
    with pytest.raises(ValueError, match=r"plan has \d+ rows but the test batches hold \d+ slots"):
        slice_evaluation(zeros, fold.split, fold.plan.iloc[:-1], batch_size=8)
    flipped = fold.plan.assign(kind=np.where(fold.plan["kind"] == "lesion", "normal", "lesion"))
    with pytest.raises(ValueError, match="not in the same order"):
        slice_evaluation(zeros, fold.split, flipped, batch_size=8)


def test_role_plan_reads_the_test_parts_in_slot_order(fold):
    plan = role_plan(fold.root / "batches", "axial", test_fold=1, n_folds=1)
    assert plan[["subject_name", "slice", "kind", "repeat"]].equals(
        fold.plan[["subject_name", "slice", "kind", "repeat"]].reset_index(drop=True))


# --------------------------------------------------------------------------- per subject, 3-D
@pytest.mark.parametrize("plane", ["axial", "sagittal"])
def test_subject_evaluation_of_a_perfect_and_an_empty_prediction(fold, plane):
    store = store_of(fold, plane)
    names = [s.subject for s in fold.subjects]
    order = [names[2], names[0], names[1]]
    rows = np.concatenate([store.rows([s] * store.n_slices, np.arange(store.n_slices)) for s in order])
    recorder = Recorder(by_call_order(store.masks_at(rows)))
    perfect = subject_evaluation(recorder, store, order, batch_size=7)
    assert max(recorder.sizes) <= 7 and sum(recorder.sizes) == len(rows)
    assert list(perfect.columns) == ["subject_name", *METRIC_KEYS]
    assert perfect["subject_name"].tolist() == order
    masks = {s.subject: np.asanyarray(nib.load(s.mask).dataobj) for s in fold.subjects}
    truth_voxels = [int(masks[s].sum()) for s in order]
    assert perfect["truth_voxels"].tolist() == truth_voxels
    assert (perfect[["dice", "precision", "recall", "lesionwise_f1"]] == 1.0).all().all()
    assert (perfect["hd95_mm"] == 0.0).all() and (perfect["volume_difference_voxels"] == 0).all()

    empty = subject_evaluation(zeros, store, order, batch_size=64, channels=3)
    assert len(empty) == 3 and (empty["pred_voxels"] == 0).all()
    assert (empty[["dice", "recall", "lesionwise_f1"]] == 0.0).all().all()
    assert empty["hd95_mm"].isna().all()


def test_both_empty_subject_scores_one(fold, tmp_path):
    shutil.copytree(fold.root / "stores" / "coronal", tmp_path / "coronal")
    store = SliceStore(tmp_path / "coronal")
    subject = fold.subjects[1].subject
    masks = np.load(tmp_path / "coronal" / "masks.npy", mmap_mode="r+")
    masks[store.rows([subject] * store.n_slices, np.arange(store.n_slices))] = 0
    masks.flush()
    del masks
    table = subject_evaluation(zeros, store, [subject, fold.subjects[0].subject], batch_size=16)
    empty, other = table.iloc[0], table.iloc[1]
    assert empty["truth_voxels"] == 0 and empty["pred_voxels"] == 0
    assert empty[["dice", "precision", "recall", "lesionwise_f1"]].tolist() == [1.0] * 4
    assert empty["hd95_mm"] == 0.0
    assert other["truth_voxels"] > 0 and other["dice"] == 0.0
    # A threshold above every probability is an empty prediction too.
    assert subject_evaluation(ones, store, [subject], batch_size=16, threshold=1.0)["dice"].tolist() == [1.0]

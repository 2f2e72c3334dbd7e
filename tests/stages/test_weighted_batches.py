"""Stages 04-06 with ``batches.kind = "foreground_weighted"`` and ``cv.edge_slices = 1`` on the tiny cohort:
the candidates lose the stack ends, every part's plan is its whole pool with weights summing to 1, and a
training run on the weighted plans resumes exactly."""
from __future__ import annotations

import math
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import strokeseg.train.loop as training
from strokeseg.cli import main
from strokeseg.contracts import batches_csv, lesion_slices_csv, normal_slices_csv
from strokeseg.data.prepared import PreparedSplit, part_dir, weights_name
from strokeseg.data.stores import store_geometry, store_index
from strokeseg.protocol.splits import PARTS, without_edge_slices
from strokeseg.train.recipes import model_training
from strokeseg.workdir import stage_config, study_planes

from helpers import checkpoint_arrays, train_killed_after_epoch_1

# min_brain_fraction 0: the empty slices at the stack ends would be normal candidates but for the edge rule.
WEIGHTED = ["batches.kind=foreground_weighted", "cv.edge_slices=1", "cv.min_brain_fraction=0",
            "prepare.channels=[1]", 'prepare.planes=["axial"]']


@pytest.fixture(scope="module")
def weighted_workdir(prepared_workdir, tmp_path_factory):
    """``prepared_workdir``'s stages 01-03, then 04-06 with the weighted kind (axial, one channel)."""
    workdir = tmp_path_factory.mktemp("weighted")
    for stage in ("01_dataset", "02_splitting", "03_convert"):
        shutil.copytree(prepared_workdir / stage, workdir / stage)
    settings = [a for s in WEIGHTED for a in ("--set", s)]
    for stage in ("cross-validation", "batches", "prepare"):   # later stages start from stage 04's config
        extra = settings if stage == "cross-validation" else []
        assert main([stage, "--workdir", str(workdir), "--quiet", *extra]) == 0, stage
    return workdir


def test_without_edge_slices_drops_the_ends_of_each_subjects_stack():
    stack = pd.DataFrame({"subject_name": ["a"] * 5 + ["b"] * 3, "slice": [0, 1, 2, 3, 4, 0, 1, 2]})
    slices = pd.DataFrame({"subject_name": ["a", "a", "a", "b", "b"], "slice": [0, 1, 4, 1, 2]})
    kept = without_edge_slices(slices, stack, 1)
    assert list(zip(kept["subject_name"], kept["slice"])) == [("a", 1), ("b", 1)]
    assert without_edge_slices(slices, stack, 0) is slices


def test_stage_04_candidates_are_every_slice_off_the_stack_ends(weighted_workdir):
    cv = weighted_workdir / "04_cross_validation"
    config = stage_config(weighted_workdir, "04_cross_validation")
    for plane in study_planes(weighted_workdir):
        index = store_index(weighted_workdir / "03_convert", plane)
        ends = index.groupby("subject_name")["slice"].agg(["min", "max"])
        first, last = index["subject_name"].map(ends["min"]), index["subject_name"].map(ends["max"])
        inside = index[(index["slice"] > first) & (index["slice"] < last)]
        h, w = store_geometry(weighted_workdir / "03_convert", plane).canvas.slice_shape
        eligible = inside[(inside["lesion_pixels"] == 0)
                          & (inside["brain_pixels"] >= math.ceil(config.cv.min_brain_fraction * h * w))]
        read = [pd.concat([pd.read_csv(cv / name(plane, k)) for k in range(1, config.cv.n_folds + 1)])
                for name in (lesion_slices_csv, normal_slices_csv)]
        lesions, normals = (set(zip(f["subject_name"], f["slice"])) for f in read)
        lesioned = inside[inside["lesion_pixels"] > 0]
        assert lesions == set(zip(lesioned["subject_name"], lesioned["slice"]))
        # every eligible slice (cv.normal_ratio ignored), and none at an end of its stack
        assert normals == set(zip(eligible["subject_name"], eligible["slice"]))
        ends_of_stacks = set(zip(index["subject_name"], index["slice"])) - set(zip(inside["subject_name"],
                                                                                  inside["slice"]))
        assert len(ends_of_stacks) == 2 * len(ends) and not (lesions | normals) & ends_of_stacks


def test_weighted_plans_and_prepared_weights_sum_to_one_per_part(weighted_workdir):
    cv, plans = weighted_workdir / "04_cross_validation", weighted_workdir / "05_batch_distribution"
    config = stage_config(weighted_workdir, "06_preparation")
    size = config.batches.batch_size
    for plane in study_planes(weighted_workdir):
        for fold in range(1, config.cv.n_folds + 1):
            candidates = pd.concat([pd.read_csv(cv / lesion_slices_csv(plane, fold)),
                                    pd.read_csv(cv / normal_slices_csv(plane, fold))])
            covered = []
            for part in PARTS:
                plan = pd.read_csv(plans / batches_csv(plane, fold, part))
                pool = plan[plan["repeat"] == 0]
                assert plan["weight"].sum() == pytest.approx(1.0)
                per_subject = pool.groupby("subject_name")["weight"].sum()
                np.testing.assert_allclose(per_subject, 1 / len(per_subject), rtol=1e-6)
                assert not pool.duplicated(["subject_name", "slice"]).any()
                assert len(plan) % size == 0 and len(plan) - len(pool) < size
                assert (plan.loc[plan["repeat"] == 1, "weight"] == 0).all()
                assert (plan["kind"].eq("lesion") == (plan["sum_voxel"] > 0)).all()
                covered.append(pool)
                if plane == "axial":
                    weights = np.load(part_dir(weighted_workdir / "06_preparation", plane, fold) / weights_name(part))
                    assert weights.shape == (len(plan) // size, size) and weights.dtype == np.float64
                    assert weights.sum() == pytest.approx(1.0)
                    np.testing.assert_array_equal(weights.ravel(), plan["weight"].to_numpy())
            pools = pd.concat(covered)     # the two parts' pools: every candidate of the fold once
            assert len(pools) == len(candidates)
            assert set(zip(pools["subject_name"], pools["slice"])) == set(zip(candidates["subject_name"],
                                                                              candidates["slice"]))
    usage = pd.read_csv(plans / "bin_usage.csv")
    np.testing.assert_allclose(usage.groupby(["plane", "fold", "part"])["weight"].sum(), 1.0)
    split = PreparedSplit(weighted_workdir / "06_preparation", "axial", 1, "train", config.cv.n_folds)
    assert split.weights.sum() == pytest.approx(config.cv.n_folds - 1)


def test_stage_05_refuses_a_kind_stage_04_did_not_choose_its_normals_for(weighted_workdir, capsys):
    assert main(["batches", "--workdir", str(weighted_workdir), "--quiet", "--set", "batches.kind=distribution"]) != 0
    assert "rerun cross-validation" in capsys.readouterr().err


def test_both_pool_kinds_take_stage_04s_every_eligible_slice(weighted_workdir, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(weighted_workdir, workdir)
    assert main(["batches", "--workdir", str(workdir), "--quiet", "--set", "batches.kind=every_slice"]) == 0
    for plane in study_planes(workdir):
        plan = pd.read_csv(workdir / "05_batch_distribution" / batches_csv(plane, 1, "train"))
        real = plan[plan["repeat"] == 0]
        assert np.allclose(real["weight"], 1 / len(real)) and (plan.loc[plan["repeat"] == 1, "weight"] == 0).all()


def test_a_weighted_run_resumes_exactly_as_if_never_interrupted(weighted_workdir, tmp_path, monkeypatch):
    config = stage_config(weighted_workdir, "06_preparation")
    config = replace(config, comparison=replace(config.comparison, model_options={"unet": {"base_filters": 4}}))
    # Augmentation off: it halves the cost, and its seeds (epoch, position) are the distribution plans' whose
    # resume tests/train/test_loop.py checks; what is new here is the per-epoch draw of the slots.
    run = replace(model_training(config, "unet", "published"), max_epochs=2, steps_per_epoch=2, validation_steps=1,
                  augment=False)

    def spec(name):
        return training.RunSpec(weighted_workdir / "06_preparation", "axial", 1, config.cv.n_folds, run, config.seed,
                                False, tmp_path / name)

    straight, interrupted = spec("straight"), spec("interrupted")
    assert straight.split("train").weights is not None
    training.train(straight, progress=False)
    train_killed_after_epoch_1(interrupted, monkeypatch)
    for a, b in zip(checkpoint_arrays(straight.folder), checkpoint_arrays(interrupted.folder), strict=True):
        np.testing.assert_array_equal(a, b)   # weights, optimizer moments, step count, seed states
    columns = ["epoch", "loss", "val_loss"]
    pd.testing.assert_frame_equal(pd.read_csv(straight.folder / "history.csv")[columns],
                                  pd.read_csv(interrupted.folder / "history.csv")[columns])

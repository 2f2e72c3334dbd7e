"""Stage 10 on the tiny cohort: every hold-out subject is predicted, fused, written and scored, the
tables agree with the written masks, ``auto`` chooses the post-processing on cross-validation subjects
only, ``postprocess.rule=largest`` leaves one component per fused mask, and the exported models folder
loads as ``strokeseg predict`` loads it.

Stage 08 is run for real, as briefly as it can be (three planes, fold 1, one step of a 4-filter
U-Net): stage 10 reads nothing but its published outputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.config import PLANES, PostprocessConfig, apply_overrides, read_config
from strokeseg.errors import StageOrderError, StrokesegError
from strokeseg.infer.inference import PlanePredictor
from strokeseg.workdir import stage_config

from helpers import EAGER

TRAINING = ["training.model=unet", "training.model_options={\"base_filters\": 4}", "training.folds=[1]",
            "training.max_epochs=1", "training.steps_per_epoch=1", "training.validation_steps=1",
            "training.eval_batch_size=64", EAGER]
MASKS = ["axial", "sagittal", "coronal", "fused"]


@pytest.fixture(scope="module")
def trained(prepared_workdir, tmp_path_factory) -> Path:
    """A copy of the prepared workdir with stage 08 published for the three planes (fold 1)."""
    from strokeseg.stages import s08_training as training

    workdir = tmp_path_factory.mktemp("fusion") / "work"
    shutil.copytree(prepared_workdir, workdir)
    config = apply_overrides(stage_config(workdir, "06_preparation"), TRAINING).validate()
    training.run(workdir, config, progress=False)
    return workdir


@pytest.fixture(scope="module")
def fused(trained) -> Path:
    """Stage 10 through the command line, with the automatic lesion size, probability maps and two
    overlays."""
    from strokeseg import cli

    code = cli.main(["fusion", "--workdir", str(trained), "--quiet", "--min-lesion-voxels", "auto",
                     "--save-probabilities", "--overlays", "2", "--batch-size", "40"])
    assert code == 0
    return trained / "10_fusion"


@pytest.fixture(scope="module")
def largest(trained, tmp_path_factory) -> Path:
    """Stage 10 on a copy of the trained workdir with the config's post-processing rule ``largest``."""
    from strokeseg import cli

    workdir = tmp_path_factory.mktemp("largest") / "work"
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("10_fusion"))
    assert cli.main(["fusion", "--workdir", str(workdir), "--quiet", "--set", "postprocess.rule=largest",
                     "--overlays", "0", "--batch-size", "64"]) == 0
    return workdir / "10_fusion"


def _holdout(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / "03_convert" / "holdout.csv")


def test_every_holdout_subject_has_the_three_planes_and_the_fused_mask(fused, trained):
    subjects = pd.read_csv(fused / "subjects.csv")
    holdout = _holdout(trained)
    assert len(holdout) >= 2
    assert sorted(subjects["subject_name"].unique()) == sorted(holdout["subject_name"])   # none dropped
    for _, rows in subjects.groupby("subject_name"):
        assert sorted(rows["mask"]) == sorted(MASKS)
    bins = holdout.set_index("subject_name")["volume_bin"]
    assert (subjects["volume_bin"] == subjects["subject_name"].map(bins)).all()
    for column in ("dice", "precision", "recall", "volume_difference_voxels", "volume_difference_ml",
                   "lesion_count_difference", "lesionwise_f1", "hd95_mm"):
        assert column in subjects.columns
    manifest = json.loads((fused / "manifest.json").read_text())
    assert manifest["n_subjects"] == len(holdout) and manifest["options"]["fusion"] == "mean"
    assert manifest["batch_size"] == 40 and manifest["stage"] == "10_fusion"


def test_fused_masks_keep_the_input_geometry_and_the_metrics_are_recomputable(fused, trained):
    from strokeseg.evaluate.volume_metrics import subject_metrics

    subjects = pd.read_csv(fused / "subjects.csv")
    for row in _holdout(trained).itertuples():
        source = nib.load(row.t1w)
        written = nib.load(fused / "masks" / f"{row.subject_name}_fused_mask.nii.gz")
        mask = np.asanyarray(written.dataobj)
        assert mask.dtype == np.uint8 and written.get_data_dtype() == np.uint8
        assert mask.shape == source.shape and set(np.unique(mask)) <= {0, 1}
        np.testing.assert_allclose(written.affine, source.affine)
        np.testing.assert_allclose(written.header.get_zooms(), source.header.get_zooms())
        assert int(written.header["sform_code"]) == int(source.header["sform_code"])
        assert int(written.header["qform_code"]) == int(source.header["qform_code"])
        truth = np.asanyarray(nib.load(row.mask).dataobj)
        expected = subject_metrics(mask, truth, source.header.get_zooms()[:3])
        got = subjects[(subjects["subject_name"] == row.subject_name) & (subjects["mask"] == "fused")].iloc[0]
        for key in ("dice", "precision", "recall", "volume_difference_voxels", "volume_difference_ml",
                    "lesion_count_difference", "lesionwise_f1", "hd95_mm", "pred_voxels", "truth_voxels"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9, nan_ok=True), key
        for plane in PLANES + ("fused",):
            path = fused / "probabilities" / f"{row.subject_name}_{plane}_probability.nii.gz"
            image = nib.load(path)
            assert image.get_data_dtype() == np.uint8 and image.shape == source.shape


def test_tables_summary_gain_and_volume_bins(fused, trained):
    subjects = pd.read_csv(fused / "subjects.csv")
    n = len(_holdout(trained))
    summary = pd.read_csv(fused / "summary.csv")
    assert list(summary["mask"]) == MASKS and (summary["n"] == n).all()
    fused_rows = subjects[subjects["mask"] == "fused"]
    assert summary.loc[summary["mask"] == "fused", "dice_mean"].iloc[0] == pytest.approx(fused_rows["dice"].mean())
    gain = pd.read_csv(fused / "fusion_gain.csv")
    assert sorted(gain["plane"].unique()) == sorted(PLANES)
    dice = gain[gain["metric"] == "dice"].set_index("plane")
    for plane in PLANES:
        single = subjects[subjects["mask"] == plane]["dice"].mean()
        assert dice.loc[plane, "n_pairs"] == n
        assert dice.loc[plane, "mean_difference"] == pytest.approx(fused_rows["dice"].mean() - single, abs=1e-9)
    bins = pd.read_csv(fused / "by_volume_bin.csv")
    config = stage_config(trained, "08_training")
    n_bins = len(config.bins.volume_edges) - 1
    for mask in MASKS:
        rows = bins[bins["mask"] == mask]
        assert len(rows) == n_bins and rows["n"].sum() == n


def test_dice_tiers_for_all_and_lesion_subjects_agree_with_the_subjects_table(fused):
    subjects = pd.read_csv(fused / "subjects.csv")
    tiers = pd.read_csv(fused / "dice_tiers.csv")
    assert list(zip(tiers["mask"], tiers["group"])) == [(m, g) for m in MASKS for g in ("all", "lesion")]
    for _, row in tiers.iterrows():
        own = subjects[subjects["mask"] == row["mask"]]
        dice = (own if row["group"] == "all" else own[own["truth_voxels"] >= 1])["dice"]
        assert row["n"] == len(dice) and row["dice_mean"] == pytest.approx(dice.mean(), nan_ok=True)
        counts = [(dice >= 0.8).sum(), ((dice >= 0.6) & (dice < 0.8)).sum(), ((dice >= 0.4) & (dice < 0.6)).sum(),
                  (dice < 0.4).sum()]
        assert row[["n_dice_ge_0.8", "n_dice_0.6_0.8", "n_dice_0.4_0.6", "n_dice_lt_0.4"]].tolist() == counts
    manifest = json.loads((fused / "manifest.json").read_text())
    fused_rows = tiers[tiers["mask"] == "fused"].set_index("group")
    for group in ("all", "lesion"):
        assert manifest["dice"][group]["n"] == fused_rows.loc[group, "n"]
        assert manifest["dice"][group]["mean"] == pytest.approx(fused_rows.loc[group, "dice_mean"])


def test_the_largest_rule_of_the_config_leaves_one_component_per_fused_mask(largest, trained):
    from strokeseg.data.lesions import component_sizes

    names = _holdout(trained)["subject_name"]
    counts = [len(component_sizes(np.asanyarray(nib.load(largest / "masks" / f"{n}_fused_mask.nii.gz").dataobj), 6))
              for n in names]
    assert max(counts) <= 1
    record = json.loads((largest / "models" / "fusion.json").read_text())
    assert record["largest_component"] is True and record["min_lesion_voxels"] == 0
    manifest = json.loads((largest / "manifest.json").read_text())
    assert manifest["postprocess"] == {"asked": "largest", "rule": "largest", "min_lesion_voxels": 0}
    assert not (largest / "min_lesion_voxels.csv").exists() and (largest / "dice_tiers.csv").is_file()
    subjects = pd.read_csv(largest / "subjects.csv")
    assert (subjects.loc[subjects["mask"] == "fused", "pred_lesions"] <= 1).all()


def test_results_by_location_class_and_hemisphere_and_lesionwise_detection(fused, trained):
    """The tiny cohort is named in MNI space: stage 01 located its lesions, stages 08 and 10 group by them."""
    from strokeseg.data.lesion_locations import lesion_detected

    n = len(_holdout(trained))
    subjects = pd.read_csv(fused / "subjects.csv")
    located = pd.read_csv(trained / "01_dataset" / "subject_locations.csv").set_index("subject_name")
    table = pd.read_csv(fused / "by_location.csv")
    for (mask, grouping), rows in table.groupby(["mask", "grouping"]):
        assert rows["n"].sum() == n       # every subject in one group, every group listed
        chosen = subjects[subjects["mask"] == mask]
        for row in rows[rows["n"] > 0].itertuples():
            members = chosen[chosen["subject_name"].map(located[grouping].fillna("no lesion")) == row.group]
            assert row.n == len(members) and row.dice_mean == pytest.approx(members["dice"].mean())
    lesions = pd.read_csv(fused / "holdout_lesions.csv")
    stage01 = pd.read_csv(trained / "01_dataset" / "lesion_locations.csv")
    assert len(lesions) == int(stage01["subject_name"].isin(_holdout(trained)["subject_name"]).sum())
    for name, own in lesions.groupby("subject_name"):      # detection recomputed from the written masks
        truth = nib.load(_holdout(trained).set_index("subject_name").loc[name, "mask"]).get_fdata()
        mask = nib.load(fused / "masks" / f"{name}_fused_mask.nii.gz").get_fdata()
        assert own.sort_values("lesion")["detected"].tolist() == lesion_detected(truth, mask).tolist()
    detection = pd.read_csv(fused / "detection_by_location.csv")
    for _, rows in detection.groupby("grouping"):
        assert rows["n_lesions"].sum() == len(lesions) and rows["detected"].sum() == lesions["detected"].sum()
    cv = pd.read_csv(trained / "08_training" / "test_subjects_3d.csv")
    assert {"location_class", "hemisphere"} <= set(cv.columns)
    by_plane = pd.read_csv(trained / "08_training" / "by_location.csv")
    assert by_plane.groupby(["plane", "grouping"])["n"].sum().eq(len(cv) // 3).all()


def test_auto_post_processing_is_chosen_on_cross_validation_subjects_only(fused, trained):
    table = pd.read_csv(fused / "min_lesion_voxels.csv")
    assert table["chosen"].sum() == 1 and list(table["rule"]) == ["min_size"] * (len(table) - 1) + ["largest"]
    sizes = table[table["rule"] == "min_size"]
    best = sizes["mean_dice"].max()
    largest_wins = table["mean_dice"].iloc[-1] > best                  # the largest rule only when strictly better
    chosen_row = table[table["chosen"]].iloc[0]
    assert chosen_row["rule"] == ("largest" if largest_wins else "min_size")
    chosen = 0 if largest_wins else int(chosen_row["min_lesion_voxels"])
    if not largest_wins:
        assert chosen == sizes.loc[sizes["mean_dice"] == best, "min_lesion_voxels"].min()   # ties: smallest
    manifest = json.loads((fused / "manifest.json").read_text())
    assert manifest["min_lesion_voxels"] == chosen and manifest["options"]["min_lesion_voxels"] == "auto"
    assert manifest["postprocess"] == {"asked": "auto", "rule": chosen_row["rule"], "min_lesion_voxels": chosen}
    record = json.loads((fused / "models" / "fusion.json").read_text())
    assert record["min_lesion_voxels"] == chosen and record["largest_component"] == largest_wins
    used = pd.read_csv(fused / "cv_subjects.csv")
    folds = pd.read_csv(trained / "04_cross_validation" / "folds.csv")
    fold_1 = set(folds.loc[folds["fold"] == 1, "subject_name"])
    assert set(used["subject_name"]) == fold_1                       # the fold-1 models' test fold
    assert not set(used["subject_name"]) & set(_holdout(trained)["subject_name"])
    assert (table["n_subjects"] == len(used)).all()


def test_models_export_loads_like_predict_loads_it(fused, trained):
    from strokeseg.infer import inference

    models = inference.load_plane_models(fused / "models")
    assert set(models) == set(PLANES) and all(len(m) == 1 for m in models.values())
    best = pd.read_csv(trained / "08_training" / "best_folds.csv")
    for plane in PLANES:
        source = trained / "08_training" / best.loc[best["plane"] == plane, "model_file"].iloc[0]
        assert (fused / "models" / f"{plane}.keras").read_bytes() == source.read_bytes()
    config = read_config(fused / "models" / "config.json")
    assert config.convert == stage_config(trained, "08_training").convert


def test_figures_are_written(fused):
    for name in ("dice_before_after_fusion.png", "fused_metrics_3d.png", "fusion_3d_view.png"):
        assert (fused / name).stat().st_size > 1000, name
    overlays = sorted((fused / "overlays").glob("*_overlay.png"))
    assert len(overlays) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in overlays)


def test_ensemble_members_weights_and_export(trained, tmp_path):
    """--ensemble --fusion weighted_mean without predicting: every fold model of runs.csv per plane,
    weights = the All row's subject-3-D Dice, <plane>_fold<k>.keras files that load as an ensemble."""
    from strokeseg.infer import inference, models_folder
    from strokeseg.infer.fusion import FusionSettings
    from strokeseg.stages import s10_fusion as fusion

    training_dir = trained / "08_training"
    chosen = models_folder.trained_models(training_dir, "unet", ensemble=True)
    runs = pd.read_csv(training_dir / "runs.csv")
    assert {p: [f for f, _ in m] for p, m in chosen.items()} == {p: [1] for p in PLANES}
    assert chosen["axial"][0][1] == runs.loc[runs["plane"] == "axial", "model_file"].iloc[0]
    weights = models_folder.cross_validation_weights(training_dir, chosen, ensemble=True)
    for plane in PLANES:
        table = pd.read_csv(training_dir / f"{plane}_folds_results.csv", dtype={"fold": str})
        expected = table[(table["evaluation"] == "subject_3d") & (table["fold"] == "All")]["dice_mean"].iloc[0]
        assert weights[plane] == pytest.approx(expected)
    options = fusion.FusionStageOptions(fusion="weighted_mean", ensemble=True, min_lesion_voxels=3)
    config = fusion.starting_config(trained)
    sources = {p: [(f, training_dir / path) for f, path in m] for p, m in chosen.items()}
    folder = models_folder.export_models(tmp_path / "models", sources, config, ensemble=True)
    models_folder.write_fusion_settings(folder, options.settings(weights), ensemble=True)
    assert sorted(p.name for p in folder.glob("*.keras")) == sorted(f"{p}_fold1.keras" for p in PLANES)
    record = json.loads((folder / "fusion.json").read_text())
    assert record["weights"] == weights and record["min_lesion_voxels"] == 3 and record["ensemble"]
    assert models_folder.fusion_settings(folder) == FusionSettings(rule="weighted_mean", weights=weights,
                                                                   min_lesion_voxels=3)
    assert all(len(m) == 1 for m in inference.load_plane_models(folder, ensemble=True).values())


def test_stage_arguments_become_run_options():
    import argparse

    from strokeseg.stages import s10_fusion as fusion

    parser = argparse.ArgumentParser()
    fusion.add_arguments(parser)
    def options(*argv):
        return fusion.run_options(parser.parse_args(list(argv)))["options"]

    chosen = options("--ensemble", "--fusion", "majority", "--flip-tta", "--min-lesion-voxels", "25", "--overlays", "0")
    assert chosen.ensemble and chosen.flip_tta and chosen.fusion == "majority"
    assert chosen.min_lesion_voxels == 25 and chosen.overlays == 0
    assert chosen.settings(None).min_lesion_voxels == 25 and chosen.settings(None).rule == "majority"
    assert options("--min-lesion-voxels", "auto").postprocess() == ("auto", 0)
    assert options().min_lesion_voxels is None and options() == fusion.FusionStageOptions()
    with pytest.raises(SystemExit):
        parser.parse_args(["--min-lesion-voxels", "-3"])
    # post-processing: the flags override config.postprocess, which applies without them
    config = PostprocessConfig(rule="min_size", min_lesion_voxels=7)
    assert options().postprocess(config) == ("min_size", 7) and options().postprocess() == ("none", 0)
    assert options().postprocess(PostprocessConfig(rule="largest", min_lesion_voxels=7)) == ("largest", 0)
    largest = options("--largest-component")
    assert largest.postprocess(config) == ("largest", 0) and options("--min-lesion-voxels", "3").postprocess(
        PostprocessConfig(rule="largest")) == ("min_size", 3)
    assert largest.settings(None).largest_component and largest.settings(None).min_lesion_voxels == 0
    assert not chosen.settings(None).largest_component
    with pytest.raises(SystemExit):
        parser.parse_args(["--largest-component", "--min-lesion-voxels", "3"])
    with pytest.raises(StrokesegError, match="give one"):
        fusion.FusionStageOptions(largest_component=True, min_lesion_voxels=3)


def test_both_post_processing_flags_are_a_one_line_usage_error(capsys, tmp_path):
    from strokeseg import cli

    from faults.catalogue import assert_one_line_error

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fusion", "--workdir", str(tmp_path), "--largest-component", "--min-lesion-voxels", "auto"])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--largest-component", "--min-lesion-voxels")


def test_missing_plane_and_bad_options_are_clear_errors(trained, tmp_path):
    from strokeseg.stages import s10_fusion as fusion

    config = fusion.starting_config(trained)
    with pytest.raises(StrokesegError, match="min_lesion_voxels"):
        fusion.FusionStageOptions(min_lesion_voxels="big")
    with pytest.raises(StrokesegError, match="fusion rule"):
        fusion.FusionStageOptions(fusion="max")
    workdir = tmp_path / "work"
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("10_fusion"))
    best = pd.read_csv(workdir / "08_training" / "best_folds.csv")
    best[best["plane"] != "coronal"].to_csv(workdir / "08_training" / "best_folds.csv", index=False)
    with pytest.raises(StageOrderError, match="coronal"):
        fusion.run(workdir, config, progress=False)
    assert not (workdir / "10_fusion" / "manifest.json").exists()


def test_cross_validation_volumes_are_predicted_as_stage_08_evaluated_them(trained):
    """auto's out-of-fold probabilities (store slices rebuilt into a volume, then the hold-out code
    path) equal stage 08's own test-fold prediction of the same subject, to float32 rounding."""
    from strokeseg.data.stores import SliceStore
    from strokeseg.evaluate.folds import plane_probability_volume
    from strokeseg.infer import inference, postprocessing
    from strokeseg.infer.tri_planar import TriPlanarPredictor
    from strokeseg.stages import s10_fusion as fusion

    folds = pd.read_csv(trained / "04_cross_validation" / "folds.csv")
    subject = sorted(folds.loc[folds["fold"] == 1, "subject_name"])[0]
    model = inference.load_model(trained / "08_training" / "runs" / "unet" / "coronal" / "fold_1" / "best.keras")
    predict = inference.ensemble_predict([model], 16)
    store = SliceStore(trained / "03_convert" / "coronal")
    predictor = TriPlanarPredictor({"coronal": PlanePredictor(predict, 1)}, fusion.starting_config(trained).convert,
                                   batch_size=16)
    ours = postprocessing._store_probability(store, subject, predictor)
    # The hold-out path skips empty slices, so its batches group other slices; with TensorFlow's oneDNN
    # kernels off, a slice's float32 output depends on its batch (1.2e-7 measured): equal to float32 rounding.
    np.testing.assert_allclose(ours, plane_probability_volume(predict, store, subject, 16), rtol=0, atol=1e-6)


def test_strokeseg_evaluate_reproduces_the_fused_rows(fused, trained, tmp_path):
    """`strokeseg evaluate` on stage 10's masks against the hold-out's reference masks (copied into one
    flat folder) gives every metric of subjects.csv's fused rows exactly: same code, same numbers."""
    from strokeseg import cli
    from strokeseg.evaluate.volume_metrics import METRIC_KEYS

    reference = tmp_path / "reference"
    reference.mkdir()
    for mask in _holdout(trained)["mask"]:
        shutil.copy(mask, reference / Path(mask).name)
    out = tmp_path / "evaluation"
    assert cli.main(["evaluate", str(fused / "masks"), "--reference", str(reference), "--output", str(out),
                     "--quiet"]) == 0
    stage = pd.read_csv(fused / "subjects.csv")
    stage = stage[stage["mask"] == "fused"].set_index("subject_name").sort_index()
    ours = pd.read_csv(out / "subjects.csv").set_index("subject_name").sort_index()
    assert list(ours.index) == list(stage.index) and (ours["mask"] == "masks").all()
    # as floats: a column read back from fused rows alone may hold only whole numbers (e.g. F1 0 or 1)
    pd.testing.assert_frame_equal(ours[list(METRIC_KEYS)].astype(float), stage[list(METRIC_KEYS)].astype(float),
                                  check_exact=True)

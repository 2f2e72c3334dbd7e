"""Each source project's profile through every stage (01 -> 10, in this process: helpers.run_study)
on a tiny cohort of its kind of data: lgg on kaggle_3m TIFF slices, lcnn and strokeseg-ct on PNG
slice folders, isles3d on the synthetic DWI + ADC cohort (raxnet, the paper profile, runs through
the run.py entry points in test_end_to_end.py). Epochs and sizes are shrunk by overrides here, never
in the profiles; one training step per run: this checks that each profile's settings fit the stages."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from strokeseg.cli import run_stage as cli_run_stage
from strokeseg.contracts import STAGES
from strokeseg.data.grid_plan import GridPlan, native_grid

from conftest import tiny_subject
from helpers import BRIEF, COMMAND, ROOT, check_group_disjoint_folds, check_masks_on_own_grids, run_study

# A profile's own model, shrunk where it has a width option, and stage 09 with one tiny comparison model.
TINY_COMPARISON = ["comparison.models=[\"unet\"]", "comparison.model_options={\"unet\": {\"base_filters\": 4}}",
                   "comparison.folds=[1]", "comparison.max_epochs=1"]


def write_png_cohort(root: Path, n_patients: int = 10) -> Path:
    """images/<p>/<n>.png + masks/<p>/<n>.png, numbered 1..N unpadded, from tiny head volumes."""
    rng = np.random.default_rng(3)
    for p in range(n_patients):
        t1, mask = tiny_subject(rng, (24, 20, 12 + p % 3))
        for k in range(t1.shape[2]):
            for folder, image in (("images", np.clip(t1[:, :, k] / 4, 0, 255)), ("masks", 255 * mask[:, :, k])):
                target = root / folder / f"patient{p:02d}"
                target.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target / f"{k + 1}.png"), image.T.astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def png_cohort(tmp_path_factory) -> Path:
    return write_png_cohort(tmp_path_factory.mktemp("ct"))


def check_profile_study(workdir: Path, profile: str, model: str) -> pd.DataFrame:
    """Every stage published under the profile, one run of its model with its run logs, 10's tables."""
    for stage in STAGES:
        assert (workdir / stage.folder / "manifest.json").is_file(), stage.folder
    assert json.loads((workdir / "10_fusion" / "config.json").read_text())["profile"] == profile
    runs = pd.read_csv(workdir / "08_training" / "runs.csv")
    assert set(runs["model"]) == {model}
    run = (workdir / "08_training" / runs["model_file"].iloc[0]).parent
    assert (run / "progress.png").is_file() and any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (workdir / "09_comparison" / "runs.csv").is_file()
    tiers = pd.read_csv(workdir / "10_fusion" / "dice_tiers.csv")
    assert {"all", "lesion"} <= set(tiers["group"])
    return pd.read_csv(workdir / "10_fusion" / "subjects.csv")


def test_lcnn_profile_is_a_one_plane_study_of_png_slices_with_three_adjacent_slices(png_cohort, tmp_path):
    workdir = run_study(tmp_path / "work", "--profile", "lcnn", "--data-dir", str(png_cohort), every_stage=True,
                        overrides=BRIEF + TINY_COMPARISON + ["training.model_options={\"width\": 0.125}"])
    config = json.loads((workdir / "01_dataset" / "config.json").read_text())
    assert config["dataset"]["source"] == "png_slices"                 # detected from the layout
    assert config["training"]["planes"] == ["axial"] and config["prepare"]["channels"] == [1, 3]
    assert not (workdir / "01_dataset" / "lesion_information_sagittal.csv").exists()
    assert sorted(p.name for p in (workdir / "03_convert").iterdir() if p.is_dir()) == ["axial"]
    assert (workdir / "06_preparation" / "axial" / "fold_1" / "train_images_c3.npy").is_file()
    check_group_disjoint_folds(workdir)
    holdout = check_masks_on_own_grids(workdir, "ct")
    subjects = check_profile_study(workdir, "lcnn", "lcnn")
    assert set(subjects["mask"]) == {"axial", "fused"} and set(subjects["units"]) == {"voxels"}
    assert not (workdir / "10_fusion" / "fusion_gain.csv").exists()    # one plane: nothing fused
    assert len(subjects) == 2 * len(holdout)
    history = next((workdir / "08_training").rglob("history.csv"))
    assert pd.read_csv(history)["val_subject_dice"].between(0, 1).all()   # selected on per-subject Dice


def test_strokeseg_ct_profile_trains_the_resnet50_unet_from_random_weights(png_cohort, tmp_path):
    workdir = run_study(tmp_path / "work", "--profile", "strokeseg-ct", "--data-dir", str(png_cohort),
                        every_stage=True, overrides=BRIEF + TINY_COMPARISON)
    config = json.loads((workdir / "10_fusion" / "config.json").read_text())
    assert config["training"]["loss"] == "binary_crossentropy" and config["training"]["model_options"] == {}
    check_masks_on_own_grids(workdir, "ct")
    check_profile_study(workdir, "strokeseg-ct", "resunet")


def test_isles3d_profile_trains_the_3d_attention_unet_on_dwi_and_adc(tmp_path, capsys):
    workdir = run_study(tmp_path / "work", "--profile", "isles3d", "--n-subjects", "12", "--downsample", "2",
                        every_stage=True, overrides=BRIEF + [
                            "training.model_options={\"width\": 0.125}", "training.patch_size=[32,32,32]",
                            "training.patch_steps=1", "training.patch_validation_steps=1",
                            "comparison.model_options={\"unet3d\": {\"width\": 0.125}}", "comparison.folds=[1]",
                            "comparison.max_epochs=1"])
    plan = json.loads((workdir / "01_dataset" / "grid_plan.json").read_text())
    assert plan["channels"] == ["dwi", "adc"]
    check_masks_on_own_grids(workdir, "dwi")
    subjects = check_profile_study(workdir, "isles3d", "attention_unet3d")
    assert set(subjects["mask"]) == {"volume", "fused"}                  # a 3-D study: the fused mask is its own
    assert (workdir / "10_fusion" / "models" / "volume.keras").is_file()  # predicted by sliding windows
    assert not (workdir / "10_fusion" / "fusion_gain.csv").exists()     # no planes to fuse
    capsys.readouterr()
    assert cli_run_stage(COMMAND["10_fusion"], ["--workdir", str(workdir), "--quiet", "--min-lesion-voxels", "auto"],
                         default_workdir=ROOT) == 2
    assert "tri-planar studies" in capsys.readouterr().err
    assert set(pd.read_csv(workdir / "09_comparison" / "runs.csv")["model"]) == {"unet3d"}
    tiers = pd.read_csv(workdir / "10_fusion" / "dice_tiers.csv")
    volume = tiers[tiers["mask"] == "volume"].set_index("group")       # all cases, and those with a lesion
    scored = subjects[subjects["mask"] == "volume"]
    assert volume.loc["all", "n"] == len(scored) and volume.loc["lesion", "n"] == (scored["truth_voxels"] > 0).sum()


def write_kaggle_cohort(root: Path, n_patients: int = 10) -> Path:
    """<p>/<p>_<n>.tif (RGB) + <p>/<p>_<n>_mask.tif, n = 1..N unpadded (N = 11 or 13), two sessions of one
    patient."""
    rng = np.random.default_rng(5)
    for p in range(n_patients):
        patient = f"TCGA_CS_{4941 + min(p, 8)}_1996{1001 + p:04d}"    # patients 8 and 9: one person
        t1, mask = tiny_subject(rng, (20, 20, 11 + 2 * (p % 2)))       # two stack heights: a target-spacing plan
        folder = root / patient
        folder.mkdir(parents=True)
        for k in range(t1.shape[2]):
            grey = np.clip(t1[:, :, k] / 4, 0, 255).T
            rgb = np.stack([grey, np.sqrt(grey) * 15, 255 - grey], axis=-1).astype(np.uint8)
            cv2.imwrite(str(folder / f"{patient}_{k + 1}.tif"), rgb[..., ::-1])          # cv2 writes BGR
            cv2.imwrite(str(folder / f"{patient}_{k + 1}_mask.tif"), (255 * mask[:, :, k].T).astype(np.uint8))
    return root


def test_lgg_profile_on_kaggle_3m_has_three_channels_in_numeric_slice_order(tmp_path):
    source = write_kaggle_cohort(tmp_path / "kaggle_3m")
    workdir = run_study(tmp_path / "work", "--profile", "lgg", "--data-dir", str(source), "--spacing", "1,1,2.5",
                        every_stage=True, overrides=BRIEF + [
                            "training.model_options={\"base_filters\": 4}", "comparison.models=[\"raxnet\"]",
                            "comparison.model_options={\"raxnet\": {\"width\": 0.125}}", "comparison.folds=[1]",
                            "comparison.max_epochs=1"])
    plan = json.loads((workdir / "01_dataset" / "grid_plan.json").read_text())
    assert plan["channels"] == ["pre_contrast", "flair", "post_contrast"] and plan["planes"] == ["axial"]
    cohort = pd.read_csv(workdir / "01_dataset" / "cohort.csv")
    first = cohort.iloc[0]
    flair = np.asarray(nib.load(first["flair"]).dataobj)
    patient = source / first["subject_name"]
    expected = cv2.imread(str(patient / f"{first['subject_name']}_10.tif"))[..., 1].T     # G = FLAIR
    np.testing.assert_array_equal(flair[:, :, 9], expected)                             # slice 10, not "10" < "2"
    folds = check_group_disjoint_folds(workdir)
    assert folds["group"].str.fullmatch(r"TCGA_CS_\d{4}").all()
    store = np.load(workdir / "03_convert" / "axial" / "images.npy", mmap_mode="r")
    assert store.shape[1] == 3
    plans = pd.concat(pd.read_csv(path) for path in (workdir / "05_batch_distribution").rglob("*_batches.csv"))
    assert "weight" in plans
    grid = GridPlan.read(workdir / "01_dataset")
    own = {row.subject_name: grid.extent(native_grid(Path(row.flair)), 2) for row in cohort.itertuples()}
    assert {first for first, _ in own.values()} == {0, 1}                 # 11 slices centred among 13
    first, last = zip(*plans["subject_name"].map(own))
    assert (plans["slice"] > np.array(first)).all() and (plans["slice"] < np.array(last)).all()   # ends dropped
    holdout = check_masks_on_own_grids(workdir, "flair")
    subjects = check_profile_study(workdir, "lgg", "unet")
    assert set(subjects["units"]) == {"mm"}
    for name in holdout["subject_name"]:                                    # the largest component only
        mask = np.asarray(nib.load(workdir / "10_fusion" / "masks" / f"{name}_fused_mask.nii.gz").dataobj)
        assert ndimage.label(mask > 0)[1] <= 1

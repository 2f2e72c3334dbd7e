"""The study on cohorts beyond ATLAS, stages 01 -> 10 through ``strokeseg.cli.run_stage`` (what every
run.py calls; the run.py entry points themselves are run in subprocesses by test_end_to_end.py): the
multimodal synthetic cohort (DWI + ADC, a grid per subject, sessions of one patient), a PNG
slice-folder cohort (one plane) and a kaggle_3m-style TIFF cohort (three channels, slice numbers
1..N unpadded); and each source project's profile on its kind of data through every stage (lgg on
kaggle_3m, lcnn and strokeseg-ct on PNG slices, isles3d on the multimodal cohort; raxnet is
test_end_to_end.py's). One training step per run: this checks that the stages fit together. The stages run
in this process: a subprocess per stage would pay TensorFlow's import each time."""
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ["02_splitting", "03_convert", "04_cross_validation", "05_batch_distribution", "06_preparation"]
BRIEF = ["bins.volume_edges=[0,20,100,\"inf\"]", "bins.axial_edges=[0,5,20,\"inf\"]",
         "bins.sagittal_edges=[0,5,20,\"inf\"]", "bins.coronal_edges=[0,5,20,\"inf\"]", "cv.n_folds=3",
         "batches.batch_size=8", "batches.lesion_per_batch=4", "training.folds=[1]", "training.max_epochs=1",
         "training.steps_per_epoch=1", "training.validation_steps=1"]
# The model is not what the cohort tests are about: a 4-filter U-Net is the cheapest to build and trace.
SMALL = BRIEF + ["training.model=unet", "training.model_options={\"base_filters\": 4}"]
# A profile's own model, shrunk where it has a width option, and stage 09 with one tiny comparison model.
TINY_COMPARISON = ["comparison.models=[\"unet\"]", "comparison.model_options={\"unet\": {\"base_filters\": 4}}",
                   "comparison.folds=[1]", "comparison.max_epochs=1"]


COMMAND = {stage.folder: stage.command for stage in STAGES}


def run_stage(stage: str, workdir: Path, *args: str) -> None:
    """``<stage>/run.py --workdir WORKDIR --quiet ARGS``, in this process (its errors: captured stderr)."""
    code = cli_run_stage(COMMAND[stage], ["--workdir", str(workdir), "--quiet", *args], default_workdir=ROOT)
    assert code == 0, stage


def run_study(workdir: Path, *dataset_args: str, overrides: list[str] = SMALL, every_stage: bool = False) -> Path:
    """Stages 01 -> 10 (07 and 09 too with ``every_stage``: a profile's study, as its user runs it)."""
    run_stage("01_dataset", workdir, *dataset_args, "--workers", "1", *[a for o in overrides for a in ("--set", o)])
    for stage in DATA:
        run_stage(stage, workdir)
    config = json.loads((workdir / "06_preparation" / "config.json").read_text())
    if every_stage:
        # the model table is a smoke test here: the cheapest model, the smallest measurement
        run_stage("07_models", workdir, "--quick", "--models", "unet", "--planes", config["training"]["planes"][0],
                  "--matmul-size", "256", "--repeats", "1")
    run_stage("08_training", workdir)
    if every_stage:
        run_stage("09_comparison", workdir)
    run_stage("10_fusion", workdir)
    return workdir


def check_group_disjoint_folds(workdir: Path) -> pd.DataFrame:
    folds = pd.read_csv(workdir / "04_cross_validation" / "folds.csv")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    holdout = set(pd.read_csv(workdir / "02_splitting" / "subjects_20.csv")["group"])
    assert not holdout & set(folds["group"])
    return folds


def check_masks_on_own_grids(workdir: Path, image_column: str) -> pd.DataFrame:
    holdout = pd.read_csv(workdir / "03_convert" / "holdout.csv")
    for row in holdout.itertuples():
        mask = nib.load(workdir / "10_fusion" / "masks" / f"{row.subject_name}_fused_mask.nii.gz")
        image = nib.load(getattr(row, image_column))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    return holdout


# ------------------------------------------------------------------------------ multimodal, grids
@pytest.fixture(scope="module")
def multimodal(tmp_path_factory) -> Path:
    return run_study(tmp_path_factory.mktemp("multimodal"), "--dataset", "synthetic_multimodal",
                     "--n-subjects", "12", "--downsample", "2")   # one subject loses its lesion to the plan


def test_multimodal_cohort_runs_on_its_own_grids(multimodal):
    plan = json.loads((multimodal / "01_dataset" / "grid_plan.json").read_text())
    assert plan["kind"] == "target_spacing" and plan["channels"] == ["dwi", "adc"]
    cohort = pd.read_csv(multimodal / "01_dataset" / "cohort.csv")
    assert cohort["shape"].nunique() > 1 and set(cohort["orientation"]) == {"LAS", "RAS"}
    folds = check_group_disjoint_folds(multimodal)
    lesion_free = pd.read_csv(multimodal / "02_splitting" / "subjects_80.csv").query("sum_voxel == 0")["subject_name"]
    inner = pd.read_csv(multimodal / "05_batch_distribution" / "inner_validation.csv")
    assert not set(lesion_free) & set(inner["subject_name"])          # lesion-free subjects always train
    assert (folds["group"] == "sub-strokecase0008").sum() in (0, 2)     # both sessions, or both held out
    store = np.load(multimodal / "03_convert" / "axial" / "images.npy", mmap_mode="r")
    assert store.shape[1] == 2                                          # (rows, M, H, W)
    prepared = np.load(multimodal / "06_preparation" / "axial" / "fold_1" / "train_images_c1.npy", mmap_mode="r")
    assert prepared.shape[-1] == 2                                      # 1 slice x 2 channels
    check_masks_on_own_grids(multimodal, "dwi")
    subjects = pd.read_csv(multimodal / "10_fusion" / "subjects.csv")
    assert set(subjects["mask"]) == {"axial", "sagittal", "coronal", "fused"} and set(subjects["units"]) == {"mm"}
    assert (multimodal / "10_fusion" / "models" / "grid_plan.json").is_file()


# ------------------------------------------------------------------------------ slice folders
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
                            "training.model_options={\"width\": 0.125}", "training.patch_size=[16,16,16]",
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


def test_predict_takes_nnunet_named_two_channel_cases_and_writes_masks_on_their_own_grids(multimodal, tmp_path):
    from strokeseg.infer import predict

    holdout = pd.read_csv(multimodal / "03_convert" / "holdout.csv")
    cases = tmp_path / "cases"
    cases.mkdir()
    for row in holdout.itertuples():
        for index, channel in enumerate(("dwi", "adc")):
            (cases / f"{row.subject_name}_{index:04d}.nii.gz").symlink_to(getattr(row, channel))
    (cases / "lonely_0000.nii.gz").symlink_to(holdout["dwi"].iloc[0])          # its ADC is missing
    status = predict.main([str(cases), "--models", str(multimodal / "10_fusion" / "models"),
                           "--output", str(tmp_path / "out"), "--quiet"])
    table = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("case")
    assert status == 1 and table.loc["lonely", "status"] == "failed"
    assert "lonely_0001 (adc)" in table.loc["lonely", "message"]
    for row in holdout.itertuples():
        assert table.loc[row.subject_name, "status"] == "ok"
        ours = nib.load(tmp_path / "out" / f"{row.subject_name}_mask.nii.gz")
        stage10 = nib.load(multimodal / "10_fusion" / "masks" / f"{row.subject_name}_fused_mask.nii.gz")
        assert ours.shape == nib.load(row.dwi).shape and np.allclose(ours.affine, nib.load(row.dwi).affine)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(stage10.dataobj))   # one inference
    one = holdout.iloc[0]
    status = predict.main(["--channel", f"adc={one['adc']}", "--channel", f"dwi={one['dwi']}",
                           "--models", str(multimodal / "10_fusion" / "models"), "--output", str(tmp_path / "one")])
    assert status == 0 and len(list((tmp_path / "one").glob("*_mask.nii.gz"))) == 1

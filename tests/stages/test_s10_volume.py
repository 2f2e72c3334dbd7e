"""Stage 10 with 3-D models on the tiny cohort: the tri-planar fusion, a stage-09 3-D model and their
average on the same hold-out subjects with the paired tests against the fused mask; and the exported
3-D models folders predict as ``strokeseg predict`` does. (A study whose stage-08 model is 3-D is the
isles3d profile's, tests/test_profiles.py.)

Stages 08 and 09 run for real, as briefly as they can (one fold, one step, tiny widths)."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg import cli
from strokeseg.config import apply_overrides
from strokeseg.workdir import stage_config

from helpers import EAGER

BRIEF = ["training.folds=[1]", "training.max_epochs=1", "training.steps_per_epoch=1",
         "training.validation_steps=1", "training.patch_size=[16,16,16]", "training.patch_steps=1",
         "training.patch_validation_steps=1", "training.patch_batch_size=2", EAGER]
SLICE_MODEL = ["training.model=unet", "training.model_options={\"base_filters\": 4}"]
COMPARISON = ["comparison.models=[\"unet3d\"]", "comparison.model_options={\"unet3d\": {\"width\": 0.125}}",
              "comparison.losses=[]", "comparison.folds=[1]", "comparison.max_epochs=1"]


def _copy(source: Path, tmp_path_factory, name: str) -> Path:
    workdir = tmp_path_factory.mktemp(name) / "work"
    shutil.copytree(source, workdir)
    return workdir


@pytest.fixture(scope="module")
def compared(volume_workdir, tmp_path_factory) -> Path:
    """Stage 08 (a 2-D U-Net, three planes), stage 09 (a 3-D U-Net) and stage 10 with both."""
    from strokeseg.stages import s08_training, s09_comparison

    workdir = _copy(volume_workdir, tmp_path_factory, "compared")
    config = apply_overrides(stage_config(workdir, "06_preparation"), BRIEF + SLICE_MODEL + COMPARISON).validate()
    s08_training.run(workdir, config, progress=False)
    s09_comparison.run(workdir, config, progress=False)
    code = cli.main(["fusion", "--workdir", str(workdir), "--quiet", "--volume-model", "unet3d", "--average",
                     "--save-probabilities", "--overlays", "0"])
    assert code == 0
    return workdir


def test_the_fused_the_3d_and_the_average_mask_are_scored_on_the_same_subjects(compared):
    subjects = pd.read_csv(compared / "10_fusion" / "subjects.csv")
    holdout = pd.read_csv(compared / "03_convert" / "holdout.csv")
    assert sorted(subjects["subject_name"].unique()) == sorted(holdout["subject_name"])
    for _, rows in subjects.groupby("subject_name"):
        assert sorted(rows["mask"]) == sorted(["axial", "sagittal", "coronal", "fused", "volume", "average"])
    summary = pd.read_csv(compared / "10_fusion" / "summary.csv").set_index("mask")
    table = pd.read_csv(compared / "10_fusion" / "volume_comparison.csv")
    dice = table[table["metric"] == "dice"].set_index("mask")
    assert list(dice.index) == ["volume", "average"]
    assert (dice["n_pairs"] == len(holdout)).all()
    assert dice["fused_mean"].to_numpy() == pytest.approx([summary.loc["fused", "dice_mean"]] * 2)
    assert dice.loc["volume", "mask_mean"] == pytest.approx(summary.loc["volume", "dice_mean"])
    gain = pd.read_csv(compared / "10_fusion" / "fusion_gain.csv")
    assert set(gain["plane"]) == {"axial", "sagittal", "coronal"}      # planes only: 3-D has its own table


def test_the_average_is_the_mean_of_the_fused_and_the_3d_probability(compared):
    folder = compared / "10_fusion" / "probabilities"
    for subject in pd.read_csv(compared / "03_convert" / "holdout.csv")["subject_name"]:
        maps = {key: np.asarray(nib.load(folder / f"{subject}_{key}_probability.nii.gz").dataobj, dtype=float)
                for key in ("fused", "volume", "average")}
        assert np.abs(maps["average"] - (maps["fused"] + maps["volume"]) / 2).max() <= 1.0   # uint8 rounding


def test_the_3d_models_folder_predicts_a_holdout_volume(compared, tmp_path):
    models = compared / "10_fusion" / "models_3d"
    assert sorted(p.name for p in models.iterdir()) == ["config.json", "fusion.json", "grid_plan.json",
                                                        "volume.keras"]
    image = pd.read_csv(compared / "03_convert" / "holdout.csv")["t1w"].iloc[0]
    assert cli.main(["predict", image, "--models", str(models), "--output", str(tmp_path), "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "predictions.csv").iloc[0]
    assert row["status"] == "ok"
    mask = nib.load(tmp_path / f"{row['case']}_mask.nii.gz")
    assert mask.shape == nib.load(image).shape and np.allclose(mask.affine, nib.load(image).affine)


@pytest.mark.parametrize("arguments, says", [(["--average"], "--average needs --volume-model"),
                                             (["--volume-model", "unet"], "not a 3-D model")])
def test_bad_3d_options_are_one_line_errors(compared, capsys, arguments, says):
    assert cli.main(["fusion", "--workdir", str(compared), "--quiet", *arguments]) == 2
    assert says in capsys.readouterr().err

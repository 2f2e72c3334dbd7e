"""The study on cohorts beyond ATLAS, stages 01 -> 10 in this process (helpers.run_study): the
multimodal synthetic cohort (DWI + ADC, a grid per subject, sessions of one patient), through a
tri-planar study, and predict on its cases named as nnU-Net names them. The PNG slice-folder and
kaggle_3m cohorts run under their source projects' profiles (test_profiles.py). One training step
per run: this checks that the stages fit together."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from helpers import check_group_disjoint_folds, check_masks_on_own_grids, run_study


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

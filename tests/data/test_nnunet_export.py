"""``strokeseg export-nnunet`` (strokeseg.data.nnunet_export) on the tiny prepared workdir: the files parse
back on the source grid, dataset.json and splits_final.json carry nnU-Net v2's format and our folds, the
hold-out is kept apart, `strokeseg evaluate` reads labelsTs, and every error is one line, exit 2, with
nothing left behind."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.cli import main
from strokeseg.contracts import (
    COHORT_CSV,
    CROSS_VALIDATION,
    DATASET,
    FOLDS_CSV,
    HOLDOUT_SUBJECTS_CSV,
    SPLITTING,
    SUBJECTS_CSV,
    SUMMARY_CSV,
    TRAIN_SUBJECTS_CSV,
)
from strokeseg.data import nnunet_export
from strokeseg.data.nifti import load_mask

FOLDER = "Dataset042_StrokesegATLAS"


def export(workdir, output, *extra, dataset_id="42") -> int:
    return main(["export-nnunet", "--workdir", str(workdir), "--output", str(output), "--dataset-id",
                 str(dataset_id), "--quiet", *map(str, extra)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def names(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir())


@pytest.fixture(scope="module")
def exported(prepared_workdir, tmp_path_factory):
    """The prepared workdir exported once: (output folder, dataset folder, what the command printed)."""
    output = tmp_path_factory.mktemp("nnunet_raw") / "raw"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export(prepared_workdir, output) == 0
    return output, output / FOLDER, printed.getvalue()


@pytest.fixture(scope="module")
def study(prepared_workdir):
    """cohort.csv indexed by subject, the 80 % and 20 % subject lists and folds.csv."""
    cohort = pd.read_csv(prepared_workdir / DATASET / COHORT_CSV).set_index("subject_name")
    train = sorted(pd.read_csv(prepared_workdir / SPLITTING / TRAIN_SUBJECTS_CSV)["subject_name"])
    holdout = sorted(pd.read_csv(prepared_workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV)["subject_name"])
    folds = pd.read_csv(prepared_workdir / CROSS_VALIDATION / FOLDS_CSV)
    return cohort, train, holdout, folds


def small_workdir(prepared_workdir: Path, tmp_path: Path, stages=(DATASET, SPLITTING, CROSS_VALIDATION)) -> Path:
    """A writable copy of the stage folders the export reads (the prepared workdir is read-only)."""
    workdir = tmp_path / "workdir"
    for stage in stages:
        shutil.copytree(prepared_workdir / stage, workdir / stage)
    return workdir


# ------------------------------------------------------------------------------------- the files
def test_cases_are_the_80_and_20_percent_subjects_under_nnunet_names(exported, study):
    _, root, _ = exported
    _, train, holdout, _ = study
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "dataset.json", "imagesTr", "imagesTs",
                                                      "labelsTr", "labelsTs", "splits_final.json"]
    assert names(root / "imagesTr", "_0000.nii.gz") == train
    assert names(root / "labelsTr", ".nii.gz") == train
    assert names(root / "imagesTs", "_0000.nii.gz") == holdout
    assert names(root / "labelsTs", ".nii.gz") == holdout
    assert not set(train) & set(holdout) and len(train) + len(holdout) == 16


def test_images_and_labels_parse_back_on_the_source_grid(exported, study):
    _, root, _ = exported
    cohort, train, holdout, _ = study
    for part, subjects in (("Tr", train), ("Ts", holdout)):
        for subject in subjects:
            source = nib.load(cohort.loc[subject, "t1w"])
            image = nib.load(root / f"images{part}" / f"{subject}_0000.nii.gz")
            label = nib.load(root / f"labels{part}" / f"{subject}.nii.gz")
            assert image.shape == label.shape == source.shape
            np.testing.assert_array_equal(image.affine, source.affine)
            np.testing.assert_array_equal(label.affine, source.affine)
            assert image.get_data_dtype() == source.get_data_dtype()
            np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.asanyarray(source.dataobj))
            for code in ("sform_code", "qform_code"):
                assert int(image.header[code]) == int(label.header[code]) == int(source.header[code])
            labels = np.asanyarray(label.dataobj)
            assert label.get_data_dtype() == np.uint8 and labels.dtype == np.uint8
            assert set(np.unique(labels).tolist()) == {0, 1}
            np.testing.assert_array_equal(labels, load_mask(cohort.loc[subject, "mask"]))


def test_a_scaled_integer_t1_keeps_its_data_type_scaling_and_values(tmp_path):
    """export_case writes a scaled int16 T1 back as int16 with the file's slope/intercept and stored values."""
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    t1 = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 7).astype(np.int16)
    mask = np.zeros(t1.shape, np.float32)
    mask[1:3, 2, 3] = 1.0                                   # a float mask of 0/1 becomes uint8
    image = nib.Nifti1Image(t1, affine)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    case = nnunet_export.Case("case7", tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz")
    nnunet_export.export_case(case, tmp_path / "images", tmp_path / "labels")
    written = nib.load(tmp_path / "images" / "case7_0000.nii.gz")
    assert written.get_data_dtype() == np.int16
    assert (written.dataobj.slope, written.dataobj.inter) == (0.5, 10.0)
    np.testing.assert_array_equal(written.dataobj.get_unscaled(), t1)             # stored values, exactly
    np.testing.assert_array_equal(written.get_fdata(), t1 * 0.5 + 10.0)
    label = nib.load(tmp_path / "labels" / "case7.nii.gz")
    assert label.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(label.dataobj), mask.astype(np.uint8))
    np.testing.assert_array_equal(label.affine, affine)


# ------------------------------------------------------------------------------------- the json
def test_dataset_json_has_nnunet_v2_keys(exported, study, prepared_workdir):
    _, root, _ = exported
    _, train, _, _ = study
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["numTraining"] == len(train) == len(list((root / "imagesTr").iterdir()))
    assert meta["file_ending"] == ".nii.gz"
    assert meta["name"] == "StrokesegATLAS"
    assert str(prepared_workdir.resolve()) in meta["description"] and "stage 04" in meta["description"]
    assert "overwrite_image_reader_writer" not in meta       # nnU-Net's own default reader for .nii.gz


def test_splits_final_partitions_the_80_percent_with_our_folds(exported, study):
    _, root, _ = exported
    _, train, holdout, folds = study
    splits = json.loads((root / "splits_final.json").read_text())
    assert isinstance(splits, list) and len(splits) == folds["fold"].max() == 3
    for k, split in enumerate(splits, start=1):
        assert set(split) == {"train", "val"}
        assert split["val"] == sorted(folds.loc[folds["fold"] == k, "subject_name"])
        assert split["train"] == sorted(set(train) - set(split["val"]))
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == train
        assert not (set(split["train"]) | set(split["val"])) & set(holdout)
    assert sorted(s for split in splits for s in split["val"]) == train      # each subject validated once


def test_readme_and_printed_instructions(exported):
    output, root, printed = exported
    readme = (root / "README.txt").read_text()
    assert printed == readme
    assert f"export nnUNet_raw={output}" in readme
    assert "nnUNetv2_plan_and_preprocess -d 42" in readme
    assert f'cp {root / "splits_final.json"} "$nnUNet_preprocessed/{FOLDER}/splits_final.json"' in readme
    assert "nnUNetv2_train 42 3d_fullres FOLD   for FOLD in 0 1 2" in readme
    assert readme.index("nnUNetv2_plan_and_preprocess") < readme.index("cp ") < readme.index("nnUNetv2_train")
    assert "-f 0 1 2" in readme
    assert f"strokeseg evaluate PREDICTIONS --reference {root / 'labelsTs'} --output" in readme


def test_evaluate_scores_labels_ts_against_itself_with_dice_1(exported, study, tmp_path):
    _, root, _ = exported
    _, _, holdout, _ = study
    assert main(["evaluate", str(root / "labelsTs"), "--reference", str(root / "labelsTs"),
                 "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    subjects = pd.read_csv(tmp_path / "eval" / SUBJECTS_CSV)
    assert sorted(subjects["subject_name"]) == holdout
    assert (subjects["dice"] == 1.0).all()
    assert pd.read_csv(tmp_path / "eval" / SUMMARY_CSV)["dice_mean"].tolist() == [1.0]


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("stages, missing", [((), DATASET), ((DATASET,), SPLITTING),
                                             ((DATASET, SPLITTING), CROSS_VALIDATION)])
def test_a_missing_stage_is_one_line_and_writes_nothing(prepared_workdir, tmp_path, capsys, stages, missing):
    workdir = small_workdir(prepared_workdir, tmp_path, stages)
    workdir.mkdir(exist_ok=True)
    assert export(workdir, tmp_path / "raw") == 2
    err = one_line_error(capsys)
    assert f"{missing}/manifest.json: not found" in err
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("value", ["0", "1000", "-3", "abc", "4.5", ""])
def test_a_bad_dataset_id_is_one_line(prepared_workdir, tmp_path, capsys, value):
    assert export(prepared_workdir, tmp_path / "raw", dataset_id=value) == 2
    assert "error: --dataset-id: " in one_line_error(capsys)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("name", ["Stroke-Seg", "with space", "", "Lésion", "a/b"])
def test_a_bad_name_is_one_line(prepared_workdir, tmp_path, capsys, name):
    assert export(prepared_workdir, tmp_path / "raw", "--name", name) == 2
    assert "error: --name: " in one_line_error(capsys)
    assert not (tmp_path / "raw").exists()


def test_id_and_name_make_the_folder_name(prepared_workdir, tmp_path):
    assert export(prepared_workdir, tmp_path / "raw", "--name", "My_Set2", dataset_id="7") == 0
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset007_My_Set2"]
    assert json.loads((tmp_path / "raw" / "Dataset007_My_Set2" / "dataset.json").read_text())["name"] == "My_Set2"


def test_an_existing_dataset_needs_overwrite_which_replaces_it_whole(prepared_workdir, tmp_path, capsys):
    output = tmp_path / "raw"
    assert export(prepared_workdir, output) == 0
    stale = output / FOLDER / "imagesTr" / "sub-stale_0000.nii.gz"
    stale.write_bytes(b"old")
    before = tree(output)
    capsys.readouterr()
    assert export(prepared_workdir, output) == 2
    err = one_line_error(capsys)
    assert str(output / FOLDER) in err and "--overwrite" in err
    assert tree(output) == before and sorted(p.name for p in output.iterdir()) == [FOLDER]
    assert export(prepared_workdir, output, "--overwrite") == 0
    assert not stale.exists()
    assert sorted(p.name for p in output.iterdir()) == [FOLDER]        # no staging or old folder left
    after = tree(output)
    assert sorted(after) == sorted(k for k in before if "sub-stale" not in k)
    assert all(after[k] == before[k] for k in after if k.endswith((".json", ".txt")))


def test_another_folder_with_the_same_id_is_refused(prepared_workdir, tmp_path, capsys):
    other = tmp_path / "raw" / "Dataset042_Other"
    other.mkdir(parents=True)
    assert export(prepared_workdir, tmp_path / "raw", "--overwrite") == 2
    assert f"error: {other}: has dataset id 42 too" in one_line_error(capsys)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset042_Other"]


def test_a_bad_mask_midway_names_the_file_and_leaves_nothing(prepared_workdir, tmp_path, capsys):
    workdir = small_workdir(prepared_workdir, tmp_path)
    cohort = pd.read_csv(workdir / DATASET / COHORT_CSV)
    holdout = sorted(pd.read_csv(workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV)["subject_name"])
    row = cohort.index[cohort["subject_name"] == holdout[-1]][0]           # the last case exported
    source = nib.load(cohort.loc[row, "mask"])
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj).astype(np.uint8) * 2, source.affine), bad)
    cohort.loc[row, "mask"] = str(bad)
    cohort.to_csv(workdir / DATASET / COHORT_CSV, index=False)
    output = tmp_path / "deep" / "raw"
    assert export(workdir, output) == 2
    assert f"error: {bad}: mask has values other than 0 and 1" in one_line_error(capsys)
    assert not (tmp_path / "deep").exists()                                # created folders removed too
    output.mkdir(parents=True)
    assert export(workdir, output) == 2
    assert list(output.iterdir()) == []                                    # no staging folder left


@pytest.mark.parametrize("damage, file, fault", [
    ("fold_missing", FOLDS_CSV, "has no fold"),
    ("holdout_in_train", HOLDOUT_SUBJECTS_CSV, "is also in"),
    ("unknown_subject", TRAIN_SUBJECTS_CSV, "is not in"),
])
def test_inconsistent_stage_tables_are_one_line(prepared_workdir, tmp_path, capsys, damage, file, fault):
    workdir = small_workdir(prepared_workdir, tmp_path)
    train_csv = workdir / SPLITTING / TRAIN_SUBJECTS_CSV
    if damage == "fold_missing":
        folds = pd.read_csv(workdir / CROSS_VALIDATION / FOLDS_CSV)
        folds.iloc[1:].to_csv(workdir / CROSS_VALIDATION / FOLDS_CSV, index=False)
    elif damage == "holdout_in_train":
        holdout = pd.read_csv(workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV)
        train = pd.read_csv(train_csv)
        pd.concat([holdout, train.iloc[:1]]).to_csv(workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV, index=False)
    else:
        train = pd.read_csv(train_csv)
        train.loc[0, "subject_name"] = "sub-r009s999"
        train.to_csv(train_csv, index=False)
    assert export(workdir, tmp_path / "raw") == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: {workdir.resolve()}/") and file in err.split(": ")[1] and fault in err
    assert not (tmp_path / "raw").exists()

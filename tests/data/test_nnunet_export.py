"""``strokeseg export-nnunet`` (strokeseg.data.nnunet_export) on the tiny prepared workdir (one T1 channel)
and on a synthetic DWI + ADC workdir (two channels, a grid per subject, sessions of one patient): the files
parse back on each case's own grid, one per channel, dataset.json and splits_final.json carry nnU-Net v2's
format and our folds, the hold-out and the sessions of one patient are kept apart, `strokeseg evaluate`
reads labelsTs, a workdir made before grid plans exports as before, and every error is one line, exit 2,
with nothing left behind."""
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
    case = nnunet_export.Case("case7", (("t1w", tmp_path / "t1.nii.gz"),), tmp_path / "mask.nii.gz")
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


def test_a_lesion_free_mask_is_exported_only_where_stage_01_allows_it(prepared_workdir, tmp_path, capsys):
    workdir = small_workdir(prepared_workdir, tmp_path)
    cohort = pd.read_csv(workdir / DATASET / COHORT_CSV)
    subject = sorted(pd.read_csv(workdir / SPLITTING / TRAIN_SUBJECTS_CSV)["subject_name"])[0]
    row = cohort.index[cohort["subject_name"] == subject][0]
    source = nib.load(cohort.loc[row, "mask"])
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.uint8), source.affine), empty)
    cohort.loc[row, "mask"] = str(empty)
    cohort.to_csv(workdir / DATASET / COHORT_CSV, index=False)
    assert export(workdir, tmp_path / "raw") == 2
    assert f"error: {empty}: empty mask (no lesion voxels)" in one_line_error(capsys)
    record = json.loads((workdir / DATASET / "manifest.json").read_text())
    (workdir / DATASET / "manifest.json").write_text(json.dumps({**record, "allow_empty_masks": True}))
    assert export(workdir, tmp_path / "raw") == 0
    label = nib.load(tmp_path / "raw" / FOLDER / "labelsTr" / f"{subject}.nii.gz")
    assert label.shape == source.shape and not np.asanyarray(label.dataobj).any()


# ------------------------------------------------------------------------- several channels
def test_nnunet_channel_names_tell_nnunet_the_normalisation():
    names = nnunet_export.nnunet_channel_names
    assert names(("t1w",), ("t1",)) == {"0": "T1"}
    assert names(("dwi", "adc"), ("mr", "mr")) == {"0": "dwi", "1": "adc"}
    assert names(("ct",), ("ct",)) == {"0": "CT"}                       # nnU-Net's CT normalisation
    assert names(("pre_contrast", "flair"), ("image8", "image8")) == {"0": "pre_contrast", "1": "flair"}
    assert names(("t1", "t1w"), ("t1", "t1")) == {"0": "t1", "1": "t1w"}   # two T1 channels keep their names


def test_every_channel_is_written_with_its_own_file_values(tmp_path):
    """A second channel keeps its data type and values: float64 (wider than the float32 strokeseg
    validates) and scaled int16, on the first channel's grid but with its own header."""
    affine = np.array([[0, -1.5, 0, 30], [2.0, 0, 0, -20], [0, 0, 1.25, 5], [0, 0, 0, 1]])
    grid = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    first = (grid * 3.25).astype(np.float32)
    wide = grid * (1 + 1e-12) + 1 / 3                                   # not representable in float32
    scaled = (grid * 5).astype(np.int16)
    mask = (grid % 7 == 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(first, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(wide, affine), tmp_path / "b.nii")         # .nii in, .nii.gz out
    image = nib.Nifti1Image(scaled, affine)
    image.header.set_slope_inter(0.25, -3.0)
    nib.save(image, tmp_path / "c.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    case = nnunet_export.Case("case1", (("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii"),
                                        ("c", tmp_path / "c.nii.gz")), tmp_path / "mask.nii.gz")
    nnunet_export.export_case(case, tmp_path / "images", tmp_path / "labels")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"case1_000{i}.nii.gz" for i in range(3)]
    for index, values, dtype in ((0, first, np.float32), (1, wide, np.float64)):
        written = nib.load(tmp_path / "images" / f"case1_000{index}.nii.gz")
        assert written.get_data_dtype() == dtype
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), values)
        np.testing.assert_array_equal(written.affine, affine)
    written = nib.load(tmp_path / "images" / "case1_0002.nii.gz")
    assert written.get_data_dtype() == np.int16 and (written.dataobj.slope, written.dataobj.inter) == (0.25, -3.0)
    np.testing.assert_array_equal(written.dataobj.get_unscaled(), scaled)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "labels" / "case1.nii.gz").dataobj), mask)


MULTIMODAL_SETTINGS = ["bins.volume_edges=[0,20,100,\"inf\"]", "bins.axial_edges=[0,5,20,\"inf\"]",
                       "bins.sagittal_edges=[0,5,20,\"inf\"]", "bins.coronal_edges=[0,5,20,\"inf\"]",
                       "cv.n_folds=3"]


@pytest.fixture(scope="module")
def multimodal_workdir(tmp_path_factory) -> Path:
    """Stages 01-04 on 12 synthetic DWI + ADC patients (a grid per subject; patient 8 has two sessions)."""
    workdir = tmp_path_factory.mktemp("multimodal")
    settings = [a for o in MULTIMODAL_SETTINGS for a in ("--set", o)]
    assert main(["dataset", "--workdir", str(workdir), "--quiet", "--dataset", "synthetic_multimodal",
                 "--n-subjects", "12", "--downsample", "3", "--workers", "1", *settings]) == 0
    for stage in ("splitting", "convert", "cross-validation"):
        assert main([stage, "--workdir", str(workdir), "--quiet"]) == 0, stage
    return workdir


@pytest.fixture(scope="module")
def multimodal_export(multimodal_workdir, tmp_path_factory):
    output = tmp_path_factory.mktemp("nnunet_multimodal") / "raw"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export(multimodal_workdir, output) == 0
    return output / FOLDER, printed.getvalue()


def test_two_channels_are_written_per_case_on_the_case_own_grid(multimodal_workdir, multimodal_export):
    root, _ = multimodal_export
    cohort = pd.read_csv(multimodal_workdir / DATASET / COHORT_CSV).set_index("subject_name")
    train = sorted(pd.read_csv(multimodal_workdir / SPLITTING / TRAIN_SUBJECTS_CSV)["subject_name"])
    holdout = sorted(pd.read_csv(multimodal_workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV)["subject_name"])
    affines = []
    for part, subjects in (("Tr", train), ("Ts", holdout)):
        assert sorted(p.name for p in (root / f"images{part}").iterdir()) == sorted(
            f"{s}_{i:04d}.nii.gz" for s in subjects for i in (0, 1))
        for subject in subjects:
            own = nib.load(cohort.loc[subject, "dwi"])
            for index, channel in enumerate(("dwi", "adc")):
                source = nib.load(cohort.loc[subject, channel])
                image = nib.load(root / f"images{part}" / f"{subject}_{index:04d}.nii.gz")
                assert image.get_data_dtype() == source.get_data_dtype()
                np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.asanyarray(source.dataobj))
                np.testing.assert_array_equal(image.affine, own.affine)
            label = nib.load(root / f"labels{part}" / f"{subject}.nii.gz")
            np.testing.assert_array_equal(label.affine, own.affine)
            np.testing.assert_array_equal(np.asanyarray(label.dataobj), load_mask(cohort.loc[subject, "mask"]))
            affines.append(own.affine)
    assert len({a.tobytes() for a in affines}) == len(affines)          # every case on its own grid


def test_two_channel_dataset_json_and_readme(multimodal_workdir, multimodal_export):
    root, printed = multimodal_export
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "dwi", "1": "adc"}
    assert meta["labels"] == {"background": 0, "lesion": 1} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == len(list((root / "imagesTr").glob("*_0000.nii.gz"))) == len(
        list((root / "labelsTr").iterdir()))
    assert meta["strokeseg"]["channels"] == ["dwi", "adc"] and meta["strokeseg"]["channel_kinds"] == ["mr", "mr"]
    assert meta["strokeseg"]["spacing_known"] is True and meta["strokeseg"]["synthetic_data"] is True
    assert "SYNTHETIC" in meta["description"] and "dwi, adc" in meta["description"]
    readme = (root / "README.txt").read_text()
    assert printed == readme
    assert "<case>_0000.nii.gz  dwi" in readme and "<case>_0001.nii.gz  adc" in readme
    assert "NOT known" not in readme


def test_two_channel_splits_follow_our_folds_and_keep_sessions_together(multimodal_workdir, multimodal_export):
    root, _ = multimodal_export
    folds = pd.read_csv(multimodal_workdir / CROSS_VALIDATION / FOLDS_CSV)
    cohort = pd.read_csv(multimodal_workdir / DATASET / COHORT_CSV)
    train = sorted(pd.read_csv(multimodal_workdir / SPLITTING / TRAIN_SUBJECTS_CSV)["subject_name"])
    splits = json.loads((root / "splits_final.json").read_text())
    assert len(splits) == 3
    for k, split in enumerate(splits, start=1):
        assert split["val"] == sorted(folds.loc[folds["fold"] == k, "subject_name"])
        assert sorted(split["train"] + split["val"]) == train
    assert sorted(s for split in splits for s in split["val"]) == train
    sessions = cohort.groupby("group")["subject_name"].apply(set)
    assert (sessions.map(len) > 1).any()                                 # the test has a patient to keep together
    for members in sessions:
        where = {i for i, split in enumerate(splits) for s in members if s in split["val"]}
        assert len(where) <= 1 and (not where or members <= set(splits[where.pop()]["val"]))


def test_sessions_of_one_patient_in_two_folds_are_refused(multimodal_workdir, tmp_path, capsys):
    workdir = small_workdir(multimodal_workdir, tmp_path)
    cohort = pd.read_csv(workdir / DATASET / COHORT_CSV)
    patient = cohort.groupby("group")["subject_name"].apply(sorted)
    members = next(m for m in patient if len(m) > 1)
    folds_csv = workdir / CROSS_VALIDATION / FOLDS_CSV
    folds = pd.read_csv(folds_csv)
    held = set(pd.read_csv(workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV)["subject_name"])
    assert not set(members) & held                                       # as stage 02 drew this cohort
    second = folds.index[folds["subject_name"] == members[1]][0]
    folds.loc[second, "fold"] = folds.loc[second, "fold"] % 3 + 1
    folds.to_csv(folds_csv, index=False)
    assert export(workdir, tmp_path / "raw") == 2
    err = one_line_error(capsys)
    assert f"error: {folds_csv.resolve()}: " in err and "sessions of one patient" in err
    assert not (tmp_path / "raw").exists()


def test_a_channel_on_another_grid_names_the_file(multimodal_workdir, tmp_path, capsys):
    workdir = small_workdir(multimodal_workdir, tmp_path)
    cohort = pd.read_csv(workdir / DATASET / COHORT_CSV)
    shapes = cohort["shape"].tolist()
    other = next(i for i in range(1, len(cohort)) if shapes[i] != shapes[0])
    cohort.loc[0, "adc"] = cohort.loc[other, "adc"]
    cohort.to_csv(workdir / DATASET / COHORT_CSV, index=False)
    assert export(workdir, tmp_path / "raw") == 2
    err = one_line_error(capsys)
    assert f"error: {cohort.loc[other, 'adc']}: channel adc has shape" in err and "one grid" in err
    assert not (tmp_path / "raw").exists()


def test_an_unknown_voxel_size_is_recorded_and_warned_about(prepared_workdir, tmp_path, caplog):
    workdir = small_workdir(prepared_workdir, tmp_path)
    plan_json = workdir / DATASET / "grid_plan.json"
    plan_json.write_text(json.dumps({**json.loads(plan_json.read_text()), "spacing_known": False}))
    with caplog.at_level("WARNING", logger="strokeseg.data.nnunet_export"):
        root = nnunet_export.export(workdir, tmp_path / "raw", 42, progress=False)
    assert any("nnU-Net will treat the voxels as 1 mm" in r.getMessage() for r in caplog.records)
    assert json.loads((root / "dataset.json").read_text())["strokeseg"]["spacing_known"] is False
    assert "voxel size of this cohort is NOT known" in (root / "README.txt").read_text()


# ------------------------------------------------------------------- workdirs before grid plans
def test_a_workdir_made_before_grid_plans_exports_its_t1_as_before(prepared_workdir, exported, tmp_path):
    """No grid_plan.json, cohort.csv of subject_name, site, t1w, mask, no group columns, a manifest
    without the reader's keys: the same dataset as the current workdir's."""
    workdir = small_workdir(prepared_workdir, tmp_path)
    (workdir / DATASET / "grid_plan.json").unlink()
    cohort_csv = workdir / DATASET / COHORT_CSV
    pd.read_csv(cohort_csv)[["subject_name", "site", "t1w", "mask"]].to_csv(cohort_csv, index=False)
    for path in (workdir / SPLITTING / TRAIN_SUBJECTS_CSV, workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV,
                 workdir / CROSS_VALIDATION / FOLDS_CSV):
        pd.read_csv(path).drop(columns=["group"], errors="ignore").to_csv(path, index=False)
    record = json.loads((workdir / DATASET / "manifest.json").read_text())
    old = {k: record[k] for k in ("stage", "synthetic_data", "outputs")}
    (workdir / DATASET / "manifest.json").write_text(json.dumps(old))
    assert export(workdir, tmp_path / "raw") == 0
    root, (_, current, _) = tmp_path / "raw" / FOLDER, exported
    assert sorted(tree(root)) == sorted(tree(current))
    for name in sorted(tree(root)):
        if name.endswith(".nii.gz"):
            a, b = nib.load(root / name), nib.load(current / name)
            assert a.get_data_dtype() == b.get_data_dtype()
            np.testing.assert_array_equal(a.affine, b.affine)
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    meta, now = (json.loads((r / "dataset.json").read_text()) for r in (root, current))
    assert meta["channel_names"] == now["channel_names"] == {"0": "T1"}
    assert meta["strokeseg"]["channels"] == ["t1w"] and meta["strokeseg"]["channel_kinds"] == ["t1"]
    assert (root / "splits_final.json").read_text() == (current / "splits_final.json").read_text()


def test_a_patient_on_both_sides_of_the_hold_out_split_is_refused(multimodal_workdir, tmp_path, capsys):
    workdir = small_workdir(multimodal_workdir, tmp_path)
    patient = pd.read_csv(workdir / DATASET / COHORT_CSV).groupby("group")["subject_name"].apply(sorted)
    moved = next(m for m in patient if len(m) > 1)[1]
    train_csv, holdout_csv = workdir / SPLITTING / TRAIN_SUBJECTS_CSV, workdir / SPLITTING / HOLDOUT_SUBJECTS_CSV
    folds_csv = workdir / CROSS_VALIDATION / FOLDS_CSV
    train, holdout, folds = (pd.read_csv(p) for p in (train_csv, holdout_csv, folds_csv))
    pd.concat([holdout, train[train["subject_name"] == moved]]).to_csv(holdout_csv, index=False)
    train[train["subject_name"] != moved].to_csv(train_csv, index=False)
    folds[folds["subject_name"] != moved].to_csv(folds_csv, index=False)
    assert export(workdir, tmp_path / "raw") == 2
    err = one_line_error(capsys)
    assert f"error: {holdout_csv.resolve()}: subject {moved} is held out but" in err and "same patient" in err

"""``strokeseg evaluate`` (strokeseg.evaluate.external) on small NIfTI folders the tests write: stage 10's
metrics on hand-made masks, case matching across our, nnU-Net's and MONAI's layouts, every error
(exit 2, one line, nothing written), --resample, both Dice conventions, and --against's paired table."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from strokeseg.cli import main
from strokeseg.evaluate import external
from strokeseg.evaluate.volume_metrics import METRIC_KEYS, subject_metrics

from conftest import subject_paths, write_tiny_cohort

SHAPE = (12, 10, 8)
AFFINE = np.diag([2.0, 1.0, 3.0, 1.0])        # anisotropic: HD95 and mL must use the header's voxel size
AFFINE[:3, 3] = (-10.0, -5.0, -12.0)
SPACING = (2.0, 1.0, 3.0)


def vol(*voxels, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for v in voxels:
        mask[v] = 1
    return mask


def save(path: Path, data, affine=AFFINE, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), affine), path)
    return path


def evaluate(pred, reference, output, *extra) -> int:
    return main(["evaluate", str(pred), "--reference", str(reference), "--output", str(output), "--quiet",
                 *map(str, extra)])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------------- case ids
@pytest.mark.parametrize("name, case", [
    ("sub-r001s001_fused_mask.nii.gz", "sub-r001s001"),                                            # stage 10
    ("sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz", "sub-r001s001"),  # ATLAS
    ("sub-r001s001_ses-1_space-MNI152NLin2009aSym_mask.nii.gz", "sub-r001s001"),     # predict on an ATLAS T1w
    ("sub-strokecase0001_ses-0001_msk.nii.gz", "sub-strokecase0001"),                               # ISLES'22
    ("sub-01.nii", "sub-01"),
    ("patient7_mask.nii.gz", "patient7"),                                                          # predict
    ("patient7_fused_mask.nii.gz", "patient7"),
    ("amos_0001.nii.gz", "amos_0001"),                                                             # nnU-Net
    ("case_0001_seg.nii.gz", "case_0001"),                                                         # MONAI
    ("case_0001_SEG.NII.GZ", "case_0001"),
    ("lesion_msk.nii", "lesion"),
    ("_mask.nii.gz", "_mask"),                                     # a suffix alone is the whole name
])
def test_case_id(name, case):
    assert external.case_id(Path("any") / name) == case


def test_reference_folders_skip_images_and_keep_masks():
    names = ["a/sub-1_ses-1_T1w.nii.gz", "a/sub-1_ses-1_label-L_desc-T1lesion_mask.nii.gz",
             "b/sub-2_ses-0001_dwi.nii.gz", "b/sub-2_ses-0001_ADC.nii.gz", "b/sub-2_ses-0001_FLAIR.nii.gz",
             "b/sub-2_ses-0001_t2w.nii", "b/sub-2_ses-0001_msk.nii.gz",
             "imagesTr/amos_0001_0000.nii.gz", "imagesTr/amos_0001_0001.nii.gz", "labelsTr/amos_0001.nii.gz",
             "imagesTs/amos_0500_0000.nii.gz", "labelsTs/amos_0002.nii.gz"]
    kept = external.reference_masks([Path(n) for n in names])
    assert [str(p) for p in kept] == ["a/sub-1_ses-1_label-L_desc-T1lesion_mask.nii.gz",
                                      "b/sub-2_ses-0001_msk.nii.gz", "labelsTr/amos_0001.nii.gz",
                                      "labelsTs/amos_0002.nii.gz"]


# ------------------------------------------------------------------------------ metric values
def test_metrics_are_stage_10s_on_hand_made_masks(tmp_path):
    truth_a, pred_a = vol((1, 1, 1), (1, 1, 2), (1, 1, 3)), vol((1, 1, 3), (1, 1, 4))   # TP 1, |P| 2, |G| 3
    truth_b, pred_b = vol((5, 2, 2)), vol((2, 2, 2))                                      # 3 voxels apart in x
    for case, truth, pred in (("a", truth_a, pred_a), ("b", truth_b, pred_b)):
        save(tmp_path / "ref" / f"{case}.nii.gz", truth)
        save(tmp_path / "pred" / f"{case}_mask.nii.gz", pred)
    assert evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out") == 0
    subjects = pd.read_csv(tmp_path / "out" / "subjects.csv").set_index("subject_name")
    assert list(subjects.columns[:3]) == ["volume_bin", "volume_bin_label", "mask"]
    assert list(subjects.columns[3:]) == list(external.SUBJECT_METRICS)
    assert (subjects["mask"] == "pred").all() and (subjects["volume_bin"] == 0).all()
    assert (subjects["volume_bin_label"] == "(0, 5000]").all()
    a, b = subjects.loc["a"], subjects.loc["b"]
    assert a["dice"] == pytest.approx(0.4) and a["dice_nnunet"] == pytest.approx(0.4)
    assert a["precision"] == pytest.approx(0.5) and a["recall"] == pytest.approx(1 / 3)
    assert a["volume_difference_voxels"] == 1 and a["volume_difference_ml"] == pytest.approx(0.006)  # 6 mm3 voxels
    assert a["lesion_count_difference"] == 0 and a["lesionwise_f1"] == 1.0 and a["connectivity"] == 6
    assert b["dice"] == 0 and b["lesionwise_f1"] == 0 and b["false_positive_lesions"] == 1
    assert b["hd95_mm"] == pytest.approx(6.0)                       # 3 voxels of 2 mm
    for case, truth, pred in (("a", truth_a, pred_a), ("b", truth_b, pred_b)):
        expected = subject_metrics(pred, truth, SPACING, connectivity=6)
        for key in METRIC_KEYS:
            assert subjects.loc[case, key] == pytest.approx(expected[key], rel=1e-9, nan_ok=True), key
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["mask"]) == ["pred"] and summary["n"].iloc[0] == 2
    assert summary["dice_mean"].iloc[0] == pytest.approx(0.2)
    bins = pd.read_csv(tmp_path / "out" / "by_volume_bin.csv")
    assert len(bins) == 6 and bins["n"].tolist() == [2, 0, 0, 0, 0, 0]
    assert not (tmp_path / "out" / "paired_comparison.csv").exists()


def test_both_dice_conventions_with_an_empty_empty_case(tmp_path):
    save(tmp_path / "ref" / "empty.nii.gz", vol())
    save(tmp_path / "pred" / "empty.nii.gz", vol())
    save(tmp_path / "ref" / "half.nii.gz", vol((1, 1, 1), (1, 1, 2)))
    save(tmp_path / "pred" / "half.nii.gz", vol((1, 1, 1), (5, 5, 5)))           # Dice 0.5
    assert evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out") == 0
    subjects = pd.read_csv(tmp_path / "out" / "subjects.csv").set_index("subject_name")
    assert subjects.loc["empty", "dice"] == 1.0 and np.isnan(subjects.loc["empty", "dice_nnunet"])   # ATLAS / nnU-Net
    assert subjects.loc["half", "dice"] == pytest.approx(0.5) == subjects.loc["half", "dice_nnunet"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert summary["n"] == 2
    assert summary["dice_mean"] == pytest.approx(0.75) and summary["dice_nnunet_mean"] == pytest.approx(0.5)
    assert summary["dice_nnunet_median"] == pytest.approx(0.5) and np.isnan(summary["dice_nnunet_std"])
    bins = pd.read_csv(tmp_path / "out" / "by_volume_bin.csv")
    assert "dice_nnunet_mean" in bins.columns


# ----------------------------------------------------------------------------------- layouts
def test_our_layout_matches_an_atlas_tree(tmp_path):
    subjects = write_tiny_cohort(tmp_path / "atlas", 3)               # T1w and mask per subject
    (tmp_path / "stage10").mkdir()
    for i, subject in enumerate(subjects):                             # stage 10's names, and predict's
        name = f"{subject}_fused_mask.nii.gz" if i else f"{subject}_ses-1_space-MNI152NLin2009aSym_mask.nii.gz"
        shutil.copy(subject_paths(tmp_path / "atlas", subject)[1], tmp_path / "stage10" / name)
    (tmp_path / "stage10" / "predictions.csv").write_text("case\n")               # not NIfTI: ignored
    # python -m strokeseg.evaluate.external
    assert external.main([str(tmp_path / "stage10"), "--reference", str(tmp_path / "atlas"),
                          "--output", str(tmp_path / "out"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "out" / "subjects.csv")
    assert table["subject_name"].tolist() == subjects and (table["dice"] == 1.0).all()
    assert (table["mask"] == "stage10").all()


def test_nnunet_layout_with_its_extra_files(tmp_path):
    rng = np.random.default_rng(1)
    dataset, predictions = tmp_path / "Dataset501_Stroke", tmp_path / "nnunet_out"
    truths = {}
    for i in (1, 2, 3):
        case = f"STROKE_{i:04d}"
        truths[case] = (rng.random(SHAPE) > 0.7).astype(np.uint8)
        save(dataset / "labelsTr" / f"{case}.nii.gz", truths[case])
        save(dataset / "imagesTr" / f"{case}_0000.nii.gz", rng.random(SHAPE) * 300, dtype=np.float32)
        save(predictions / f"{case}.nii.gz", truths[case])
        (predictions / f"{case}.npz").write_bytes(b"not a mask")
        (predictions / f"{case}.pkl").write_bytes(b"not a mask")
    for name in ("plans.json", "dataset.json", "predict_from_raw_data_args.json"):
        (predictions / name).write_text("{}")
    (dataset / "dataset.json").write_text("{}")
    # the whole dataset folder (images skipped) and labelsTr alone are both references
    for reference in (dataset, dataset / "labelsTr"):
        assert evaluate(predictions, reference, tmp_path / "out") == 0
        table = pd.read_csv(tmp_path / "out" / "subjects.csv")
        assert table["subject_name"].tolist() == sorted(truths) and (table["dice"] == 1.0).all()


def test_monai_layout_is_searched_recursively(tmp_path):
    truth = vol((1, 1, 1), (2, 1, 1))
    for case in ("case_a", "case_b"):
        save(tmp_path / "ref" / f"{case}_msk.nii.gz", truth)
        save(tmp_path / "monai" / case / f"{case}_seg.nii.gz", truth)
    save(tmp_path / "monai" / ".cache" / "case_c_seg.nii.gz", truth)             # hidden folder: skipped
    save(tmp_path / "monai" / "case_a" / ".case_d_seg.nii.gz", truth)            # hidden file: skipped
    assert evaluate(tmp_path / "monai", tmp_path / "ref", tmp_path / "out") == 0
    table = pd.read_csv(tmp_path / "out" / "subjects.csv")
    assert table["subject_name"].tolist() == ["case_a", "case_b"] and (table["dice"] == 1.0).all()


# ------------------------------------------------------------------------------------ errors
def _two_cases(root: Path) -> tuple[Path, Path]:
    for case in ("c1", "c2"):
        save(root / "ref" / f"{case}.nii.gz", vol((1, 1, 1)))
        save(root / "pred" / f"{case}_mask.nii.gz", vol((1, 1, 1)))
    return root / "pred", root / "ref"


def _fault(name: str, pred: Path, ref: Path) -> tuple[Path, Path, str]:
    """Damage the folders; returns (pred folder, ref folder, text the error must contain)."""
    if name == "missing case":
        (pred / "c2_mask.nii.gz").unlink()
        return pred, ref, f"{ref / 'c2.nii.gz'}: no prediction for case 'c2'"
    if name == "extra case":
        save(pred / "c3_mask.nii.gz", vol())
        return pred, ref, f"{pred / 'c3_mask.nii.gz'}: no reference mask for case 'c3'"
    if name == "non-binary prediction":
        save(pred / "c2_mask.nii.gz", vol((1, 1, 1)) * 2)
        return pred, ref, f"{pred / 'c2_mask.nii.gz'}: mask has values other than 0 and 1 (2)"
    if name == "non-binary reference":
        save(ref / "c1.nii.gz", np.full(SHAPE, 0.5), dtype=np.float32)
        return pred, ref, f"{ref / 'c1.nii.gz'}: mask has values other than 0 and 1"
    if name == "shape mismatch":
        save(pred / "c2_mask.nii.gz", vol((1, 1, 1), shape=(12, 10, 9)))
        return pred, ref, f"{pred / 'c2_mask.nii.gz'}: shape (12, 10, 9) differs from the reference's (12, 10, 8)"
    if name == "affine mismatch":
        save(pred / "c2_mask.nii.gz", vol((1, 1, 1)), affine=np.eye(4))
        return pred, ref, f"{pred / 'c2_mask.nii.gz'}: affine differs from the reference's"
    if name == "two files with one id":
        save(pred / "deeper" / "c1_seg.nii.gz", vol((1, 1, 1)))
        return pred, ref, f"same case id 'c1' as {pred / 'c1_mask.nii.gz'}"
    if name == "empty predictions folder":
        for path in pred.iterdir():
            path.unlink()
        (pred / "plans.json").write_text("{}")
        return pred, ref, f"{pred}: no .nii/.nii.gz files in the predictions folder"
    if name == "predictions folder not found":
        return pred.with_name("nowhere"), ref, f"{pred.with_name('nowhere')}: predictions folder not found"
    raise AssertionError(name)


FAULTS = ["missing case", "extra case", "non-binary prediction", "non-binary reference", "shape mismatch",
          "affine mismatch", "two files with one id", "empty predictions folder", "predictions folder not found"]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_one_line_exit_2_and_nothing_is_written(tmp_path, capsys, fault):
    pred, ref, expected = _fault(fault, *_two_cases(tmp_path))
    assert evaluate(pred, ref, tmp_path / "new" / "out") == 2
    err = one_line_error(capsys)
    assert expected in err, err
    assert not (tmp_path / "new").exists()
    # an existing output folder keeps its earlier tables untouched
    out = tmp_path / "old"
    out.mkdir()
    (out / "subjects.csv").write_text("earlier\n")
    assert evaluate(pred, ref, out) == 2
    one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["subjects.csv"] and (out / "subjects.csv").read_text() == "earlier\n"


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    pred, ref = _two_cases(tmp_path)
    (tmp_path / "out").write_text("mine")
    assert evaluate(pred, ref, tmp_path / "out") == 2
    assert f"{tmp_path / 'out'}: output exists and is not a folder" in one_line_error(capsys)
    assert (tmp_path / "out").read_text() == "mine"


def test_against_folder_is_checked_like_the_predictions(tmp_path, capsys):
    pred, ref = _two_cases(tmp_path)
    save(tmp_path / "other" / "c1.nii.gz", vol((1, 1, 1)))
    assert evaluate(pred, ref, tmp_path / "out", "--against", tmp_path / "other") == 2
    assert f"{ref / 'c2.nii.gz'}: no prediction for case 'c2' in {tmp_path / 'other'}" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_output_is_required_and_help_documents_the_case_rule(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "pred", "--reference", "ref"])
    assert exit_.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for words in ("_fused_mask", "_mask", "_seg", "_msk", "sub-<label>", "_T1w", "_0000", "recursively",
                  "--output is required", "dice_nnunet", "nearest neighbour"):
        assert words in text, words


# ---------------------------------------------------------------------------------- resample
def test_resample_moves_predictions_onto_the_reference_grid(tmp_path, capsys, monkeypatch):
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[3:7, 2:6, 2:5] = 1
    truth[8, 7, 6] = 1
    save(tmp_path / "ref" / "fine.nii.gz", truth)
    save(tmp_path / "ref" / "shifted.nii.gz", truth)
    save(tmp_path / "ref" / "same.nii.gz", truth)
    # twice as fine: every reference voxel centre is the centre of a fine voxel that holds its value
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2
    fine = truth.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    save(tmp_path / "pred" / "fine.nii.gz", fine, affine=fine_affine)
    # same shape, one voxel further along x in the array, the origin one voxel back: the same world positions
    shifted_affine = AFFINE.copy()
    shifted_affine[0, 3] -= 2.0
    save(tmp_path / "pred" / "shifted.nii.gz", np.roll(truth, 1, axis=0), affine=shifted_affine)
    save(tmp_path / "pred" / "same.nii.gz", truth)

    # The module's log, kept to itself (the root logger may hold an earlier in-process CLI run's handler).
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("strokeseg.evaluate.external")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    try:
        external.evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", resample=True, progress=False)
    finally:
        logger.removeHandler(handler)
    subjects = pd.read_csv(tmp_path / "out" / "subjects.csv").set_index("subject_name")
    assert (subjects["dice"] == 1.0).all() and (subjects["hd95_mm"] == 0.0).all()
    resampled = [r.getMessage() for r in records if "resampled onto the reference grid" in r.getMessage()]
    assert len(resampled) == 2 and any(m.startswith("fine:") for m in resampled)
    assert any(m.startswith("shifted:") and "origin -12,-5,-12" in m for m in resampled)
    # without --resample either grid is an error naming the prediction
    assert evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out2") == 2
    assert f"{tmp_path / 'pred' / 'fine.nii.gz'}: shape (24, 20, 16) differs" in one_line_error(capsys)
    (tmp_path / "pred" / "fine.nii.gz").unlink()
    (tmp_path / "ref" / "fine.nii.gz").unlink()
    assert evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out2") == 2
    assert f"{tmp_path / 'pred' / 'shifted.nii.gz'}: affine differs" in one_line_error(capsys)
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------------- against
def test_against_writes_the_paired_comparison(tmp_path):
    rng = np.random.default_rng(3)
    other_dice = []
    for i in range(7):
        truth = np.zeros(SHAPE, dtype=np.uint8)
        truth[2:10, 2:8, 1:7] = 1                                             # 288 voxels
        worse = truth.copy()
        worse.ravel()[rng.choice(np.flatnonzero(truth), 10 + 15 * i, replace=False)] = 0
        save(tmp_path / "ref" / f"c{i}.nii.gz", truth)
        save(tmp_path / "runA" / "masks" / f"c{i}_mask.nii.gz", truth)          # perfect
        save(tmp_path / "runB" / "masks" / f"c{i}_mask.nii.gz", worse)
        other_dice.append(subject_metrics(worse, truth, SPACING)["dice"])
    out = tmp_path / "out"
    assert evaluate(tmp_path / "runA" / "masks", tmp_path / "ref", out, "--against", tmp_path / "runB" / "masks") == 0
    subjects = pd.read_csv(out / "subjects.csv")
    assert subjects["mask"].tolist()[:2] == ["runA/masks", "runB/masks"] and len(subjects) == 14
    summary = pd.read_csv(out / "summary.csv")
    assert summary["mask"].tolist() == ["runA/masks", "runB/masks"]
    assert pd.read_csv(out / "by_volume_bin.csv")["mask"].unique().tolist() == ["runA/masks", "runB/masks"]
    paired = pd.read_csv(out / "paired_comparison.csv")
    assert list(paired.columns) == ["mask", "against", "metric", "better", "n_pairs", "mask_mean", "against_mean",
                                    "mean_difference", "median_difference", "statistic", "p_value", "method"]
    assert (paired["mask"] == "runA/masks").all() and (paired["against"] == "runB/masks").all()
    assert paired["metric"].tolist()[:2] == ["dice", "dice_nnunet"]
    dice = paired.set_index("metric").loc["dice"]
    differences = 1.0 - np.array(other_dice)
    assert dice["n_pairs"] == 7 and dice["better"] == "higher"
    assert dice["mask_mean"] == pytest.approx(1.0) and dice["against_mean"] == pytest.approx(np.mean(other_dice))
    assert dice["mean_difference"] == pytest.approx(differences.mean())            # PRED - OTHER
    assert dice["median_difference"] == pytest.approx(np.median(differences))
    assert dice["p_value"] == pytest.approx(stats.wilcoxon(differences, method="exact").pvalue)
    assert dice["method"] == "wilcoxon signed-rank (exact)"
    # the same output folder without --against: no stale paired table is left beside the new tables
    assert evaluate(tmp_path / "runA" / "masks", tmp_path / "ref", out) == 0
    assert not (out / "paired_comparison.csv").exists()
    assert pd.read_csv(out / "subjects.csv")["mask"].unique().tolist() == ["masks"]


def test_mask_labels():
    assert external.mask_labels([Path("/x/runA/masks"), Path("/x/runB/masks")]) == ["runA/masks", "runB/masks"]
    assert external.mask_labels([Path("/x/fused"), Path("/y/nnunet")]) == ["fused", "nnunet"]
    assert external.mask_labels([Path("/x/masks"), Path("/x/masks")]) == ["masks", "masks_2"]

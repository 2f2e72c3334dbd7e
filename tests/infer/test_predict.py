"""``strokeseg predict`` end to end with tiny Keras models: real geometry, bad inputs, bad models."""
import argparse
import gzip
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.config import ConvertConfig
from strokeseg.data import resample
from strokeseg.data.lesions import component_sizes
from strokeseg.infer import predict
from strokeseg.infer.inference import normalized_volume

from helpers import save_models

# The real ISLES'22 case lives in the project's shared/ folder beside the repository (CC BY-SA 4.0).
ISLES_DWI = (Path(__file__).resolve().parents[3] / "shared" / "data" / "isles22" / "rawdata" / "sub-strokecase0009"
             / "ses-0001" / "sub-strokecase0009_ses-0001_dwi.nii.gz")
PLANE_MODELS = {"axial.keras": 1, "sagittal.keras": 1, "coronal.keras": 1}


def run_cli(argv) -> int:
    parser = predict.add_arguments(argparse.ArgumentParser(prog="strokeseg predict"))
    return predict.run_from_args(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One fully convolutional 1×1 model per plane: probability ≥ 0.5 where the intensity ≥ 200."""
    return save_models(tmp_path_factory.mktemp("models"), PLANE_MODELS)


def mni_volume() -> np.ndarray:
    """An int16 head on the MNI grid with a bright blob (the 'lesion' of the threshold models)."""
    shape = resample.MNI_SHAPE
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (grid ** 2).sum(axis=0) < 0.7
    rng = np.random.default_rng(0)
    t1 = np.where(head, rng.normal(300, 30, shape), 0)
    blob = ((grid - np.array([0.3, 0.1, 0.0])[:, None, None, None]) ** 2).sum(axis=0) < 0.02
    t1[blob & head] = rng.normal(700, 30, int((blob & head).sum()))
    return t1.astype(np.int16)


# ------------------------------------------------------------------------------ real geometry
@pytest.mark.skipif(not ISLES_DWI.exists(), reason="ISLES'22 sample case not available")
def test_an_isles22_case_comes_back_on_exactly_its_own_grid(models, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="strokeseg.infer.predict"):
        code = run_cli([ISLES_DWI, "--models", models, "--output", out, "--save-probabilities", "--flip-tta",
                        "--min-lesion-voxels", "3", "--batch-size", "32"])
    assert code == 0
    case = "sub-strokecase0009_ses-0001_dwi"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case}_mask.nii.gz", f"{case}_probability.nii.gz",
                                                            f"{case}_lesions.csv", "predictions.csv"])
    source = nib.load(ISLES_DWI)
    written = nib.load(out / f"{case}_mask.nii.gz")
    assert written.shape == source.shape == (112, 112, 73)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, source.affine)
    for key in ("sform_code", "qform_code", "dim", "pixdim", "xyzt_units", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(written.header[key], source.header[key], err_msg=key)
    assert nib.aff2axcodes(written.affine) == ("L", "A", "S")
    mask = np.asarray(written.dataobj)
    assert set(np.unique(mask)) <= {0, 1} and 0 < mask.sum() < mask.size // 10

    probability = nib.load(out / f"{case}_probability.nii.gz")
    assert probability.shape == source.shape and probability.get_data_dtype() == np.float32
    np.testing.assert_array_equal(probability.affine, source.affine)
    assert 0.0 <= np.asarray(probability.dataobj).min() and np.asarray(probability.dataobj).max() <= 1.0

    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == list(predict.CSV_COLUMNS)
    row = table.iloc[0]
    assert row["case"] == case and row["input"] == str(ISLES_DWI)
    assert row["status"] == "ok" and bool(row["resampled"]) and pd.isna(row["message"])
    assert row["voxels"] == mask.sum()
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    assert row["lesion_volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-4)
    assert row["lesion_count"] == len(component_sizes(mask, 6))
    assert row["seconds"] > 0
    assert "is not the MNI152 grid: resampled onto it" in caplog.text


# ----------------------------------------------------------------------------- bad inputs
def write_inputs(folder: Path) -> dict[str, str]:
    """One good on-grid volume and six bad inputs; returns case -> expected fault."""
    folder.mkdir()
    nib.save(nib.Nifti1Image(mni_volume(), resample.MNI_AFFINE), folder / "good_T1w.nii")
    (folder / "text.nii.gz").write_text("this is not a NIfTI file\n")
    small = np.random.default_rng(1).normal(100, 10, (6, 7, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([small, small], axis=-1), np.eye(4)), folder / "four_d.nii.gz")
    nan = small.copy()
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), folder / "has_nan.nii.gz")
    nib.save(nib.Nifti1Image(np.full((6, 7, 8), 7, np.int16), np.eye(4)), folder / "constant.nii.gz")
    nib.save(nib.Nifti1Image(small, np.eye(4)), folder / "whole.nii.gz")
    data = (folder / "whole.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "whole.nii.gz").unlink()
    far = np.diag([1.0, 1, 1, 1])
    far[:3, 3] = 1000.0
    nib.save(nib.Nifti1Image(small, far), folder / "far.nii.gz")
    (folder / "notes.txt").write_text("ignored: not a NIfTI name\n")
    return {"constant": "constant image", "far": "no overlap with the MNI152 grid",
            "four_d": "4-D volume", "has_nan": "non-finite intensities", "text": "not a NIfTI file",
            "truncated": "corrupt or truncated gzip"}


def test_bad_cases_fail_alone_and_leave_no_file(models, tmp_path):
    faults = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "text_mask.nii.gz").write_bytes(b"stale output of an earlier run")
    code = run_cli([tmp_path / "in", "--models", models, "--output", out, "--quiet"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good_lesions.csv", "good_mask.nii.gz", "predictions.csv"]
    table = pd.read_csv(out / "predictions.csv").set_index("case")
    assert list(table.index) == sorted(["good", *faults])
    for case, fault in faults.items():
        assert table.loc[case, "status"] == "failed"
        message = table.loc[case, "message"]
        assert fault in message and str(tmp_path / "in") in message and "\n" not in message
        assert pd.isna(table.loc[case, "voxels"])
    good = table.loc["good"]
    assert good["status"] == "ok" and not bool(good["resampled"])
    # On the MNI grid nothing is resampled: the mask is exactly where the normalised T1 >= 200, normalised
    # with the MNI grid's affine (convert.head_region's template outline), as stage 03 normalises.
    mask = np.asarray(nib.load(out / "good_mask.nii.gz").dataobj)
    expected = normalized_volume(mni_volume(), ConvertConfig(), affine=resample.MNI_AFFINE) >= 200
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(mask, expected)
    assert good["voxels"] == expected.sum() and good["lesion_volume_ml"] == pytest.approx(expected.sum() / 1000)


# ------------------------------------------------------------------------------ lesion locations
def test_each_case_has_a_lesions_table_located_only_when_the_input_declares_mni(stub_models, tmp_path):
    """The stub scan's two blocks (tests/serve_stub.py) lie left and right of the midline."""
    from serve_stub import AFFINE, LESION_VOXELS, stub_scan

    from strokeseg.infer.lesion_report import LESION_COLUMNS

    folder = tmp_path / "in"
    folder.mkdir()
    mni = "sub-1_space-MNI152NLin2009aSym"
    nib.save(nib.Nifti1Image(stub_scan(), AFFINE), folder / f"{mni}_T1w.nii.gz")
    native = nib.Nifti1Image(stub_scan(), AFFINE)
    native.set_sform(AFFINE, code=1)                         # scanner space, and no space entity in the name
    native.set_qform(AFFINE, code=1)
    nib.save(native, folder / "native_T1w.nii.gz")
    out = tmp_path / "out"
    assert run_cli([folder, "--models", stub_models, "--output", out, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{case}{suffix}" for case in (mni, "native") for suffix in ("_mask.nii.gz", "_lesions.csv")]
        + ["predictions.csv"])
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("case")
    assert list(table.columns) == list(predict.CSV_COLUMNS[1:])
    lesions = {}
    for case in (mni, "native"):
        lesions[case] = pd.read_csv(out / f"{case}_lesions.csv", keep_default_na=False)
        mask = np.asarray(nib.load(out / f"{case}_mask.nii.gz").dataobj)
        assert list(lesions[case].columns) == list(LESION_COLUMNS)
        assert list(lesions[case]["voxels"]) == list(LESION_VOXELS)
        assert lesions[case]["voxels"].sum() == mask.sum() == table.loc[case, "voxels"]
    located = lesions[mni]
    assert list(located["hemisphere"]) == ["left", "right"] and (located["location_note"] == "").all()
    assert (located["top_regions"] != "").all() and (located["location_class"] != "").all()
    assert table.loc[mni, "hemisphere"] == "bilateral" and table.loc[mni, "location_note"] == ""
    assert table.loc[mni, "top_regions"] != ""
    note = table.loc["native", "location_note"]
    assert note.startswith("not in MNI space (its sform code is 1") and table.loc["native", "hemisphere"] == ""
    unlocated = lesions["native"]
    assert (unlocated["location_note"] == note).all()
    assert (unlocated[["hemisphere", "left_share", "location_class", "top_regions", "regions"]] == "").all().all()
    # --space MNI: the user's word that every input is registered (tests/infer/test_lesion_report.py locates it).
    parser = predict.add_arguments(argparse.ArgumentParser())
    argv = ["in.nii", "--models", str(stub_models), "--output", "o"]
    assert predict.options_from_args(parser.parse_args(argv)).space == "auto"
    assert predict.options_from_args(parser.parse_args([*argv, "--space", "MNI"])).space == "MNI"


# ------------------------------------------------------------------------------ post-processing
def test_predict_applies_the_exported_largest_component_rule_and_flags_override_it(stub_models, tmp_path, capsys):
    """Stage 10's fusion.json says largest_component: of the stub scan's two equal blocks only the first
    in C order is kept (ties: the lowest label); --min-lesion-voxels replaces the rule, and both flags at
    once are a one-line usage error."""
    import shutil

    from serve_stub import BLOCKS, write_stub_scan

    from strokeseg import cli

    from faults.catalogue import assert_one_line_error

    models = tmp_path / "models"
    shutil.copytree(stub_models, models)
    (models / "fusion.json").write_text(json.dumps({"fusion": "mean", "min_lesion_voxels": 0,
                                                    "largest_component": True}))
    (tmp_path / "in").mkdir()
    scan = write_stub_scan(tmp_path / "in" / "case_T1w.nii.gz")
    first = np.zeros(nib.load(scan).shape, np.uint8)
    first[BLOCKS[0]] = 1

    def mask(*flags) -> np.ndarray:
        out = tmp_path / f"out{len(flags)}"
        assert run_cli([scan, "--models", models, "--output", out, "--quiet", *flags]) == 0
        assert pd.read_csv(out / "predictions.csv")["lesion_count"].iloc[0] == len(component_sizes(
            np.asarray(nib.load(out / "case_mask.nii.gz").dataobj), 6))
        return np.asarray(nib.load(out / "case_mask.nii.gz").dataobj)

    np.testing.assert_array_equal(mask(), first)
    both = mask("--min-lesion-voxels", "0")
    assert both.sum() == 2 * first.sum() and len(component_sizes(both, 6)) == 2
    (models / "fusion.json").unlink()
    np.testing.assert_array_equal(mask("--largest-component", "--quiet"), first)   # the flag alone, no fusion.json
    with pytest.raises(SystemExit) as exit_info:      # argparse's usage error, as one line
        cli.main(["predict", str(scan), "--models", str(models), "--output", str(tmp_path / "no"),
                  "--largest-component", "--min-lesion-voxels", "5"])
    assert exit_info.value.code == 2 and not (tmp_path / "no").exists()
    assert_one_line_error(capsys.readouterr().err, "--largest-component", "--min-lesion-voxels")


# --------------------------------------------------------------------------------- bad models
def small_input(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4)), path)
    return path


@pytest.mark.parametrize("fault", ["no_folder", "missing_plane", "mixed_channels", "not_keras"])
def test_model_problems_are_one_line_usage_errors_and_write_nothing(tmp_path, capsys, fault):
    folder = tmp_path / "models"
    if fault != "no_folder":
        save_models(folder, PLANE_MODELS)
    if fault == "missing_plane":
        (folder / "sagittal.keras").unlink()
        expected = "no sagittal model"
    elif fault == "mixed_channels":
        (folder / "axial.keras").unlink()
        save_models(folder, {"axial_fold1.keras": 1, "axial_fold2.keras": 3})
        expected = "axial_fold2.keras: axial models read different numbers of input channels"
    elif fault == "not_keras":
        (folder / "coronal.keras").write_bytes(gzip.compress(b"nonsense"))
        expected = "coronal.keras: not a readable Keras model file (not a zip archive"
    else:
        expected = "models folder not found"
    out = tmp_path / "out"
    assert run_cli([small_input(tmp_path / "in"), "--models", folder, "--output", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()                  # the models are checked before the output folder is touched


def test_usage_errors(tmp_path, models, capsys):
    one = small_input(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "case.nii").write_bytes(b"")
    out = tmp_path / "out"
    cases = [([one, "--fusion", "weighted_mean"], "needs --weights"),
             ([one, "--weights", "1", "1", "1"], "only used with --fusion weighted_mean"),
             ([tmp_path / "empty"], "no .nii or .nii.gz files"),
             ([one, tmp_path / "b"], "share the case name 'case'"),
             ([one, "--batch-size", "0"], "--batch-size"),
             ([one, "--threshold", "1.5"], "--threshold")]
    for argv, expected in cases:
        assert run_cli([*argv, "--models", models, "--output", out]) == 2, expected
        err = capsys.readouterr().err
        assert expected in err, err
    assert not out.exists()


def test_config_json_in_the_models_folder_sets_the_normalisation(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    assert predict.convert_config(folder) == ConvertConfig()
    (folder / "config.json").write_text(json.dumps({
        "profile": "demo", "training": {"model": "raxnet"},
        "convert": {"normalization": "slice_max", "robust_percentiles": [1, 99], "canvas_multiple": 16,
                    "store_dtype": "float16"}}))
    config = predict.convert_config(folder)
    # A config.json without convert.head_region predates it: its models were trained on the non-zero voxels.
    assert config == ConvertConfig(normalization="slice_max", robust_percentiles=(1.0, 99.0), store_dtype="float16",
                                   head_region="nonzero")
    flags = argparse.Namespace(normalization="volume_robust", robust_percentiles=None, canvas_multiple=None,
                               store_dtype=None, head_region="robust")
    assert predict.convert_config(folder, flags).normalization == "volume_robust"   # flags win
    assert predict.convert_config(folder, flags).head_region == "robust"
    (folder / "config.json").write_text(json.dumps({"convert": {"head_region": "robust"}}))
    assert predict.convert_config(folder) == ConvertConfig()
    args = predict.add_arguments(argparse.ArgumentParser()).parse_args(
        ["x.nii.gz", "--models", str(folder), "--output", "o", "--head-region", "nonzero"])
    assert predict.convert_config(folder, args).head_region == "nonzero"
    (folder / "config.json").write_text(json.dumps({"convert": {"normalization": "zscore"}}))
    with pytest.raises(predict.UsageError, match=r"config\.json: convert\.normalization must be"):
        predict.convert_config(folder)
    assert run_cli([small_input(tmp_path / "in"), "--models", folder, "--output", tmp_path / "o"]) == 2
    assert "convert.normalization" in capsys.readouterr().err


def test_fusion_json_in_the_models_folder_sets_the_fusion_and_flags_override_it(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    parser = predict.add_arguments(argparse.ArgumentParser())

    def options(*flags):
        return predict.options_from_args(parser.parse_args(["in.nii", "--models", str(folder), "--output", "o",
                                                            *flags]))

    defaults = options().settings
    assert (defaults.rule, defaults.threshold, defaults.flip_tta) == ("mean", 0.5, False)
    # The slices outside the head share one model call unless every slice is asked for.
    assert options().skip_empty and not options("--all-slices").skip_empty
    assert options("--skip-empty-slices").skip_empty          # the former opt-in, now the default
    assert options().crop_to_head and not options("--whole-canvas").crop_to_head
    (folder / "fusion.json").write_text(json.dumps({   # as stage 10 exports it
        "fusion": "weighted_mean", "threshold": 0.4, "flip_tta": True, "min_lesion_voxels": 12,
        "weights": {"axial": 0.7, "sagittal": 0.5, "coronal": 0.6}, "ensemble": False}))
    chosen = options().settings
    assert (chosen.rule, chosen.threshold, chosen.flip_tta, chosen.min_lesion_voxels) == \
        ("weighted_mean", 0.4, True, 12)
    assert chosen.weights == {"axial": 0.7, "sagittal": 0.5, "coronal": 0.6}
    flagged = options("--fusion", "mean", "--no-flip-tta", "--min-lesion-voxels", "0").settings
    assert (flagged.rule, flagged.weights, flagged.flip_tta, flagged.min_lesion_voxels) == ("mean", None, False, 0)
    (folder / "fusion.json").write_text("{broken")
    with pytest.raises(predict.UsageError, match="fusion.json"):
        options()


def test_case_names_and_input_discovery(tmp_path):
    assert predict.case_name("a/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz") == \
        "sub-r001s001_ses-1_space-MNI152NLin2009aSym"
    assert predict.case_name("x/scan.NII") == "scan"
    assert predict.case_name("x/_T1w.nii") == "_T1w"
    assert predict.case_name("x/brain_T1w_mask.nii.gz") == "brain_T1w_mask"
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nii", ".hidden.nii.gz", "c.txt", "d_mask.nii.gz"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in predict.find_inputs([folder])] == ["a.nii", "b.nii.gz", "d_mask.nii.gz"]
    # the output folder's own masks are not inputs when input and output folders coincide
    assert [p.name for p in predict.find_inputs([folder], output=folder)] == ["a.nii", "b.nii.gz"]
    missing = tmp_path / "missing.nii.gz"
    assert predict.find_inputs([missing, folder / "a.nii"]) == [missing, folder / "a.nii"]


# ------------------------------------------------------------------ a folder consistent at every moment
def test_the_table_lists_every_case_pending_before_the_first_case_runs(models, tmp_path, monkeypatch):
    one = small_input(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case_mask.nii.gz").write_bytes(b"an earlier run's mask")
    (out / "predictions.csv").write_text("case,status\ncase,ok\n")
    (out / "other_mask.nii.gz").write_bytes(b"another case name: left alone")

    def interrupted(case, predictor, options, output, plan, publish=None):
        table = pd.read_csv(output / "predictions.csv")
        assert list(table.columns) == list(predict.CSV_COLUMNS)
        assert list(table["status"]) == ["pending"] and "not processed yet" in table["message"].iloc[0]
        assert not (output / "case_mask.nii.gz").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict.run([one], models, out, predict.Options())
    assert sorted(p.name for p in out.iterdir()) == ["other_mask.nii.gz", "predictions.csv"]


def test_a_case_row_says_ok_before_its_files_appear(models, tmp_path):
    from faults.catalogue import scratch_left

    one = small_input(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    options = predict.Options(save_probabilities=True)
    predictor = predict.load_predictor(models, options)
    seen = []

    def publish(row):
        seen.append((row["status"], sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
                     len(scratch_left(out))))

    row = predict.predict_case(predict.Case("case", (("t1w", one),)), predictor, options, out, publish=publish)
    assert row["status"] == "ok" and row["warning"] == ""
    assert seen == [("ok", [], 3)]                 # mask, map and lesions table complete, under scratch names
    assert sorted(p.name for p in out.iterdir()) == ["case_lesions.csv", "case_mask.nii.gz", "case_probability.nii.gz"]


def test_a_table_that_cannot_be_rewritten_mid_run_is_one_line_and_exit_status_1(models, tmp_path, capsys,
                                                                                 monkeypatch):
    import errno

    one = small_input(tmp_path / "in")
    out = tmp_path / "out"
    written = predict.write_table
    calls = []

    def full_disk(rows, path):
        calls.append(len(rows))
        if len(calls) > 1:                                   # the pending table is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written(rows, path)

    monkeypatch.setattr(predict, "write_table", full_disk)
    assert run_cli([one, "--models", models, "--output", out]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {out / 'predictions.csv'}: cannot write (No space left" in err
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["status"]) == ["pending"] and not (out / "case_mask.nii.gz").exists()

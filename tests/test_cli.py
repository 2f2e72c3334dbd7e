"""The command line: one clear line naming the file and the fault, exit 2, and no partial outputs."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.cli import COMMANDS, build_parser, main
from strokeseg.config import load_profile
from strokeseg.contracts import STAGES

from conftest import subject_paths, write_tiny_cohort

SUBJECT = "sub-r002s001"   # the second subject write_tiny_cohort makes


@pytest.fixture
def cohort(tmp_path) -> Path:
    root = tmp_path / "atlas"
    write_tiny_cohort(root, 3)
    return root


def run_dataset(cohort: Path, workdir: Path, *extra: str) -> int:
    return main(["dataset", "--atlas-dir", str(cohort), "--workdir", str(workdir), "--workers", "1",
                 "--quiet", *extra])


def damage_t1(cohort: Path, data: np.ndarray, affine=None) -> Path:
    t1, _ = subject_paths(cohort, SUBJECT)
    reference = nib.load(t1)
    nib.save(nib.Nifti1Image(data, reference.affine if affine is None else affine), t1)
    return t1


def damage_mask(cohort: Path, data: np.ndarray, affine=None) -> Path:
    _, mask = subject_paths(cohort, SUBJECT)
    reference = nib.load(mask)
    nib.save(nib.Nifti1Image(data, reference.affine if affine is None else affine), mask)
    return mask


def t1_data(cohort):
    return np.asarray(nib.load(subject_paths(cohort, SUBJECT)[0]).dataobj)


def mask_data(cohort):
    return np.asarray(nib.load(subject_paths(cohort, SUBJECT)[1]).dataobj)


def missing_mask(cohort):
    path = subject_paths(cohort, SUBJECT)[1]
    path.unlink()
    return path, "missing lesion mask"


def mismatched_shape(cohort):
    return damage_mask(cohort, mask_data(cohort)[:, :, :-2]), "shape"


def mismatched_affine(cohort):
    affine = nib.load(subject_paths(cohort, SUBJECT)[1]).affine.copy()
    affine[0, 3] += 5
    return damage_mask(cohort, mask_data(cohort), affine), "affine"


def four_d(cohort):
    return damage_t1(cohort, np.stack([t1_data(cohort)] * 2, axis=-1)), "4-D"


def nans(cohort):
    data = t1_data(cohort).astype(np.float32)
    data[3, 4, 5] = np.nan
    return damage_t1(cohort, data), "non-finite"


def empty_mask(cohort):
    return damage_mask(cohort, np.zeros_like(mask_data(cohort))), "empty mask"


def non_binary_mask(cohort):
    data = mask_data(cohort).copy()
    data[data > 0] = 2
    return damage_mask(cohort, data), "values other than 0 and 1"


def corrupt_gzip(cohort):
    path = subject_paths(cohort, SUBJECT)[0]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path, "gzip"


def constant_image(cohort):
    return damage_t1(cohort, np.full(t1_data(cohort).shape, 7.0, dtype=np.float32)), "constant"


@pytest.mark.parametrize("damage", [missing_mask, mismatched_shape, mismatched_affine, four_d, nans, empty_mask,
                                    non_binary_mask, corrupt_gzip, constant_image])
def test_bad_input_is_one_line_naming_the_file_and_no_outputs(damage, cohort, tmp_path, capsys):
    path, fault = damage(cohort)
    workdir = tmp_path / "work"
    assert run_dataset(cohort, workdir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and path.name in err[0] and fault in err[0]
    stage = workdir / "01_dataset"
    assert not stage.exists() or sorted(p.name for p in stage.iterdir()) == []


def test_a_failed_rerun_keeps_the_previous_good_outputs(cohort, tmp_path, capsys):
    workdir = tmp_path / "work"
    assert run_dataset(cohort, workdir) == 0
    before = (workdir / "01_dataset" / "lesion_information_3d.csv").read_bytes()
    nans(cohort)
    assert run_dataset(cohort, workdir) == 2
    assert (workdir / "01_dataset" / "lesion_information_3d.csv").read_bytes() == before
    assert (workdir / "01_dataset" / "manifest.json").is_file()


def test_binarize_masks_is_only_applied_when_asked(cohort, tmp_path):
    non_binary_mask(cohort)
    assert run_dataset(cohort, tmp_path / "work", "--binarize-masks") == 0


def test_unwritable_workdir(cohort, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    assert run_dataset(cohort, blocker) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not_a_folder" in err[0] and "not writable" in err[0]


def test_later_stage_before_its_input_says_what_to_run(tmp_path, capsys):
    assert main(["splitting", "--workdir", str(tmp_path), "--quiet"]) == 2
    assert "run `python 01_dataset/run.py" in capsys.readouterr().err


def test_bad_override_is_one_line(cohort, tmp_path, capsys):
    assert run_dataset(cohort, tmp_path / "w", "--set", "cv.n_folds=many") == 2
    assert capsys.readouterr().err.strip() == "error: config key 'cv.n_folds': 'many' is not a valid int"


def test_every_stage_has_help_that_names_its_defaults(capsys):
    parser = build_parser(Path("/repo"))
    for command in ("dataset", "splitting", "convert", "cross-validation", "batches", "prepare"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "--workdir" in text and "--set KEY=VALUE" in text and "default" in text


def test_the_command_lists_every_stage_in_order_with_its_summary(capsys):
    with pytest.raises(SystemExit):
        build_parser(Path("/repo")).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())          # argparse wraps long help lines
    positions = [text.index(f"{stage.title}") for stage in STAGES]   # "80 %" is printed, not %-formatted
    assert positions == sorted(positions)
    assert "predict" in text and "evaluate" in text


def stage_help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser(Path("/repo")).parse_args([command, "--help"])
    return capsys.readouterr().out


def config_lines(text: str) -> dict[str, str]:
    """The --help epilog's table: config key -> the rest of its line."""
    table = text.split("configuration values this stage reads", 1)[1]
    return {line.split()[0]: line.split(None, 1)[1] for line in table.splitlines() if line.startswith("  ")}


def test_training_help_lists_its_config_values_with_paper_and_demo_values(capsys):
    lines = config_lines(stage_help("training", capsys))
    demo = load_profile("demo").training.max_epochs
    assert lines["training.max_epochs"].startswith("500")
    if demo != 500:
        assert f"[demo: {demo}]" in lines["training.max_epochs"]
    assert {"training.precision", "training.augment", "cv.n_folds", "batches.fixed_order", "seed"} <= set(lines)
    assert not any(key.startswith(("comparison.", "dataset.")) for key in lines)


def test_splitting_help_lists_only_what_splitting_reads(capsys):
    lines = config_lines(stage_help("splitting", capsys))
    assert set(lines) == {"split.holdout_fraction", "seed"}
    assert lines["split.holdout_fraction"].startswith("0.2")


def test_every_stage_lists_the_config_values_it_reads(capsys):
    for command in COMMANDS:
        lines = config_lines(stage_help(command, capsys))
        assert lines and all(text.strip() for text in lines.values()), command


def test_missing_atlas_dir(tmp_path, capsys):
    assert main(["dataset", "--atlas-dir", str(tmp_path / "nowhere"), "--workdir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err



def write_isles_tree(root: Path, n: int = 3) -> Path:
    """rawdata/sub-*/ses-0001/dwi/{dwi,adc} + derivatives masks, 10x12x8 at 2 mm."""
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        subject, session = f"sub-strokecase{i:04d}", "ses-0001"
        raw = root / "rawdata" / subject / session / "dwi"
        derived = root / "derivatives" / subject / session
        raw.mkdir(parents=True)
        derived.mkdir(parents=True)
        for channel in ("dwi", "adc"):
            nib.save(nib.Nifti1Image(rng.uniform(1, 100, (10, 12, 8)).astype(np.float32), affine),
                     raw / f"{subject}_{session}_{channel}.nii.gz")
        mask = np.zeros((10, 12, 8), np.uint8)
        mask[4:6, 5:7, 3:5] = 1
        nib.save(nib.Nifti1Image(mask, affine), derived / f"{subject}_{session}_msk.nii.gz")
    return root


def test_a_channel_on_another_grid_stops_stage_01_with_one_line_and_no_outputs(tmp_path, capsys):
    root = write_isles_tree(tmp_path / "isles")
    adc = root / "rawdata" / "sub-strokecase0002" / "ses-0001" / "dwi" / "sub-strokecase0002_ses-0001_adc.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 12, 7), np.float32) * np.arange(7), np.diag([-2.0, 2.0, 2.0, 1.0])), adc)
    status = main(["dataset", "--data-dir", str(root), "--workdir", str(tmp_path / "w"), "--workers", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith(f"error: {adc}: channel adc has shape (10, 12, 7)") and "\n" not in err
    assert not (tmp_path / "w" / "01_dataset" / "manifest.json").exists()


def test_two_layouts_in_one_folder_ask_for_dataset(tmp_path, capsys):
    root = write_isles_tree(tmp_path / "both")
    (root / "dataset.json").write_text('{"channel_names": {"0": "DWI"}, "labels": {"background": 0, "lesion": 1}}')
    (root / "imagesTr").mkdir()
    status = main(["dataset", "--data-dir", str(root), "--workdir", str(tmp_path / "w"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "matches several dataset layouts (isles22, nnunet); give --dataset" in err

"""Fault catalogue, options and configuration: every bad value is refused once, when the config is
built, with exit status 2 and one line naming the option, before anything is written; a bug is exit
status 3 with a traceback and a request to report it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from strokeseg import cli
from strokeseg.config import LOSS_NAMES, PROFILES, load_profile

from faults.catalogue import assert_one_line_error, scratch_left, snapshot

# (arguments of `strokeseg dataset` after --workdir and --atlas-dir, what the one line must name)
DATASET_FAULTS = {
    "n_subjects overflows": (["--set", "dataset.n_subjects=1e400"], "dataset.n_subjects"),
    "percentiles not a pair": (["--set", "convert.robust_percentiles=[1]"], "convert.robust_percentiles"),
    "percentile window upside down": (["--set", "convert.robust_percentiles=[99,1]"], "convert.robust_percentiles"),
    "negative synthetic seed": (["--set", "dataset.synthetic_seed=-1"], "dataset.synthetic_seed"),
    "negative workers": (["--set", "workers=-3"], "workers"),
    "negative workers flag": (["--workers", "-3"], "workers"),
    "downsampling beyond the generator's": (["--dataset", "synthetic", "--set", "dataset.downsample=1000"],
                                            "dataset.downsample"),
    "more subjects than the generator numbers": (["--dataset", "synthetic", "--n-subjects", "10000000"],
                                                 "dataset.n_subjects"),
    "negative protocol seed": (["--seed", "-1"], "seed"),
    "seed beyond 32 bits": (["--set", "seed=4294967296"], "seed"),
    "unknown model": (["--set", "training.model=nonexistent"], "training.model"),
    "unknown comparison model": (["--set", 'comparison.models=["unet","nonexistent"]'], "comparison.models"),
    "unknown loss": (["--set", "training.loss=nonexistent"], "training.loss"),
    "unknown comparison loss": (["--set", 'comparison.losses=["dice","l3"]'], "comparison.losses"),
    "brain fraction below 0": (["--set", "cv.min_brain_fraction=-1"], "cv.min_brain_fraction"),
    "learning rate not a number": (["--set", "training.learning_rate=NaN"], "training.learning_rate"),
    "infinite weight decay": (["--set", "training.weight_decay=1e400"], "training.weight_decay"),
    "text for a whole number": (["--set", "training.max_epochs=many"], "training.max_epochs"),
    "unknown key": (["--set", "training.epochs=3"], "training.epochs"),
    "override without a value": (["--set", "training.max_epochs"], "training.max_epochs"),
    "CT window not a pair": (["--set", "convert.ct_window=[0,40,80]"], "convert.ct_window"),
    "no slice channels": (["--set", "prepare.channels=[]"], "prepare.channels"),
    "flag value not a number": (["--n-subjects", "ten"], "--n-subjects"),
    "unknown profile": (["--profile", "nnunet"], "--profile"),
    "unknown flag": (["--epochs", "3"], "--epochs"),
}


def run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:   # argparse's own errors exit from the parser
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(tiny_cohort, tmp_path_factory) -> tuple[Path, Path]:
    """(workdir with a good stage 01 on the tiny cohort, the cohort)."""
    workdir = tmp_path_factory.mktemp("config_faults")
    assert cli.main(["dataset", "--workdir", str(workdir), "--atlas-dir", str(tiny_cohort), "--quiet",
                     "--workers", "1"]) == 0
    return workdir, tiny_cohort


@pytest.mark.parametrize("fault", DATASET_FAULTS, ids=list(DATASET_FAULTS))
def test_bad_dataset_options_stop_before_any_work(fault, finished, capsys):
    workdir, cohort = finished
    arguments, name = DATASET_FAULTS[fault]
    before = snapshot(workdir)
    code, err = run(["dataset", "--workdir", str(workdir), "--atlas-dir", str(cohort), "--quiet", *arguments],
                    capsys)
    assert code == 2, err
    assert_one_line_error(err, name)
    assert snapshot(workdir) == before and not scratch_left(workdir)


@pytest.mark.parametrize("fault, arguments, name", [
    ("holdout fraction of 1", ["--set", "split.holdout_fraction=1"], "split.holdout_fraction"),
    ("infinite holdout fraction", ["--set", "split.holdout_fraction=1e400"], "split.holdout_fraction"),
    ("negative seed", ["--set", "seed=-1"], "seed"),
])
def test_bad_options_of_a_later_stage_leave_every_output_as_it_was(fault, arguments, name, finished, capsys):
    workdir, _ = finished
    before = snapshot(workdir)
    code, err = run(["splitting", "--workdir", str(workdir), "--quiet", *arguments], capsys)
    assert code == 2, err
    assert_one_line_error(err, name)
    assert snapshot(workdir) == before and not (workdir / "02_splitting").exists()


def test_a_stage_run_before_its_predecessor_names_the_missing_manifest(tmp_path, capsys):
    code, err = run(["cross-validation", "--workdir", str(tmp_path), "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "03_convert" / "manifest.json"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--workdir", "--atlas-dir"])
def test_a_symlink_loop_as_a_folder_is_one_line_naming_it(flag, tiny_cohort, tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    folders = {"--workdir": str(tmp_path / "work"), "--atlas-dir": str(tiny_cohort), flag: str(loop)}
    code, err = run(["dataset", "--quiet", *[a for pair in folders.items() for a in pair]], capsys)
    assert code == 2
    assert_one_line_error(err, flag, str(loop))
    assert not (tmp_path / "work").exists()


def test_a_recorded_config_with_a_value_out_of_range_is_refused_naming_the_file(finished, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(finished[0], workdir)
    recorded = workdir / "01_dataset" / "config.json"
    recorded.write_text(recorded.read_text().replace('"min_brain_fraction": 0.05', '"min_brain_fraction": -1'))
    before = snapshot(workdir)
    code, err = run(["splitting", "--workdir", str(workdir), "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "cv.min_brain_fraction")
    assert snapshot(workdir) == before


def test_a_bug_is_a_traceback_with_exit_status_3_and_a_request_to_report_it(finished, monkeypatch, capsys):
    from strokeseg.stages import s02_splitting

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(s02_splitting, "run", broken)
    code, err = run(["splitting", "--workdir", str(finished[0]), "--quiet"], capsys)
    assert code == cli.INTERNAL_ERROR == 3
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error") and "report" in err


def test_every_profile_is_valid_and_every_loss_name_is_a_registered_loss():
    from strokeseg.train.losses import LOSSES

    assert set(LOSS_NAMES) == set(LOSSES)
    for name in PROFILES:
        load_profile(name)

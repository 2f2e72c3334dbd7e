"""The whole study, stages 01 -> 10, through the real run.py entry points on a tiny cohort written
by the test (the training budget is one step: this checks that the stages fit together)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strokeseg.config import PLANES
from strokeseg.contracts import MEASURED_COLUMNS
from strokeseg.data.prepared import PreparedSplit
from strokeseg.train.run_logs import PROGRESS

from helpers import EAGER
from helpers import run_stage as in_process

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["01_dataset", "02_splitting", "03_convert", "04_cross_validation", "05_batch_distribution",
          "06_preparation"]
LATER_STAGES = ["07_models", "08_training", "09_comparison", "10_fusion"]
# make test runs each file's tests on one pytest-xdist worker (--dist loadfile), so that the study is run
# once and the second-run comparison follows it.
# Bins scaled to the tiny volumes so that several strata are populated.
OVERRIDES = ["bins.volume_edges=[0,150,500,\"inf\"]", "bins.axial_edges=[0,10,30,\"inf\"]",
             "bins.sagittal_edges=[0,10,30,\"inf\"]", "bins.coronal_edges=[0,10,30,\"inf\"]",
             "batches.batch_size=8", "batches.lesion_per_batch=4", "prepare.channels=[1,4]"]


def run_stage(stage: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / stage / "run.py"), "--workdir", str(workdir),
                             "--quiet", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def run_all(workdir: Path, cohort: Path, run=run_stage) -> None:
    """Stages 01-06; ``run(stage, workdir, *args)`` runs one (default: its run.py in a subprocess)."""
    overrides = [a for o in OVERRIDES for a in ("--set", o)]
    run("01_dataset", workdir, "--profile", "raxnet", "--atlas-dir", str(cohort), "--workers", "2", *overrides)
    for stage in STAGES[1:]:
        run(stage, workdir)


def digests(workdir: Path, stages: list[str]) -> dict[str, str]:
    """sha256 of every CSV and PNG of stages 01-10 by path; a CSV with columns that measure time
    (MEASURED_COLUMNS) is hashed with those columns left out, every other file byte for byte, except
    the training runs' progress figures, which plot epoch times."""
    found = {}
    for stage in stages:
        for path in sorted((workdir / stage).rglob("*")):
            if path.name == PROGRESS:
                continue
            if path.suffix == ".png":
                found[str(path.relative_to(workdir))] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.suffix == ".csv":
                frame = pd.read_csv(path)
                measured = [c for c in frame.columns if c in MEASURED_COLUMNS]
                text = frame.drop(columns=measured).to_csv(index=False) if measured else path.read_text()
                found[str(path.relative_to(workdir))] = hashlib.sha256(text.encode()).hexdigest()
    return found


@pytest.fixture(scope="module")
def workdir(tiny_cohort, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("workdir")
    run_all(folder, tiny_cohort)
    return folder


def test_every_stage_publishes_its_outputs_and_the_config_it_used(workdir):
    configs = []
    for stage in STAGES:
        manifest = json.loads((workdir / stage / "manifest.json").read_text())
        assert manifest["outputs"] and manifest["synthetic_data"] is False
        configs.append(json.loads((workdir / stage / "config.json").read_text()))
    assert all(c == configs[0] for c in configs)           # given once, carried through
    assert configs[0]["profile"] == "raxnet"
    assert configs[0]["batches"]["batch_size"] == 8
    subjects = pd.read_csv(workdir / "01_dataset" / "lesion_information_3d.csv")
    assert len(subjects) == 16
    assert list(subjects.columns[:5]) == ["subject_name", "site", "number_of_lesion", "sum_voxel", "max_size"]
    sizes = subjects[[f"lesion_size_{k}" for k in range(1, 11)]].to_numpy()
    assert np.all(np.diff(sizes, axis=1) <= 0)             # ten largest, in order
    for plane in PLANES:
        assert (workdir / "01_dataset" / f"lesion_information_{plane}.csv").is_file()
        assert (workdir / "01_dataset" / f"lesion_distribution_{plane}.png").stat().st_size > 0


def test_split_is_80_20_and_disjoint(workdir):
    train = pd.read_csv(workdir / "02_splitting" / "subjects_80.csv")
    holdout = pd.read_csv(workdir / "02_splitting" / "subjects_20.csv")
    assert not set(train["subject_name"]) & set(holdout["subject_name"])
    assert len(train) + len(holdout) == 16 and 2 <= len(holdout) <= 5
    axial_80 = pd.read_csv(workdir / "02_splitting" / "lesion_information_axial_80.csv")
    assert set(axial_80["subject_name"]) <= set(train["subject_name"])
    reference = pd.read_csv(workdir / "03_convert" / "holdout.csv")
    assert sorted(reference["subject_name"]) == sorted(holdout["subject_name"])


def test_folds_are_subject_disjoint_across_all_planes_and_splits(workdir):
    folds = pd.read_csv(workdir / "04_cross_validation" / "folds.csv")
    fold_of = folds.set_index("subject_name")["fold"]
    assert fold_of.index.is_unique and sorted(folds["fold"].unique()) == [1, 2, 3, 4, 5]
    for plane in PLANES:
        for fold in range(1, 6):
            for kind in ("lesion", "normal"):
                frame = pd.read_csv(workdir / "04_cross_validation" / plane / f"fold_{fold}_{kind}.csv")
                assert set(frame["subject_name"].map(fold_of)) <= {fold}
            lesion = pd.read_csv(workdir / "04_cross_validation" / plane / f"fold_{fold}_lesion.csv")
            normal = pd.read_csv(workdir / "04_cross_validation" / plane / f"fold_{fold}_normal.csv")
            assert not set(zip(lesion.subject_name, lesion.slice)) & set(zip(normal.subject_name, normal.slice))
            parts = {p: set(pd.read_csv(workdir / "05_batch_distribution" / plane / f"fold_{fold}" /
                                        f"{p}_batches.csv")["subject_name"]) for p in ("train", "inner_val")}
            assert parts["train"] | parts["inner_val"] <= set(folds.loc[folds.fold == fold, "subject_name"])
            assert not parts["train"] & parts["inner_val"]
    inner = pd.read_csv(workdir / "05_batch_distribution" / "inner_validation.csv")
    assert (inner["subject_name"].map(fold_of) == inner["fold"]).all()
    balance = pd.read_csv(workdir / "04_cross_validation" / "balance_tests.csv")
    assert set(balance["level"]) == {"3d", *PLANES}
    assert balance["p_value"].between(0, 1).all()
    assert balance["p_value_subject_permutation"].between(0, 1).all()
    assert (workdir / "04_cross_validation" / "balance_tests_subject_permutation.png").stat().st_size > 0


def test_no_lesion_slice_is_dropped_from_the_batches(workdir):
    usage = pd.read_csv(workdir / "05_batch_distribution" / "bin_usage.csv")
    assert (usage.loc[usage["kind"] == "lesion", "unused"] == 0).all()
    for plane in PLANES:
        slices = pd.read_csv(workdir / "02_splitting" / f"lesion_information_{plane}_80.csv")
        used = set()
        for fold in range(1, 6):
            for part in ("train", "inner_val"):
                plan = pd.read_csv(workdir / "05_batch_distribution" / plane / f"fold_{fold}" / f"{part}_batches.csv")
                plan = plan[plan["kind"] == "lesion"]
                used |= set(zip(plan.subject_name, plan.slice))
                assert (plan.groupby("batch").size() == 4).all()
        assert used == set(zip(slices.subject_name, slices.slice))


def test_prepared_arrays_feed_every_role_of_a_test_fold(workdir):
    for plane in PLANES:
        roles = {role: PreparedSplit(workdir / "06_preparation", plane, 2, role, n_folds=5, channels=4)
                 for role in ("train", "inner_val", "test")}
        for split in roles.values():
            images, masks = split.batch(split.n_batches - 1)
            assert images.shape == (8, 32, 32, 4) and masks.shape == (8, 32, 32, 1)
            lesion = np.stack([split.batch(i)[1].reshape(8, -1).max(axis=1) > 0 for i in range(split.n_batches)])
            np.testing.assert_array_equal(lesion, split.is_lesion)


# One step of training per run, one comparison model and one loss: enough for every stage to read
# what the previous one wrote. (A model option is given to check it is carried from 08 to 10; an eighth
# of the width, as the demo trains, saved 13 s of stage 08 and 3 s of stage 10 per run against width 1.)
STUDY = ["training.folds=[1]", "training.max_epochs=1", "training.steps_per_epoch=1",
         "training.validation_steps=1", "training.model_options={\"width\": 0.125}",
         "comparison.models=[\"unet\"]", "comparison.planes=[\"axial\"]", "comparison.folds=[1]",
         "comparison.max_epochs=1", "comparison.losses=[\"dice\"]", "comparison.loss_folds=[1]",
         "comparison.loss_max_epochs=1", EAGER]


def run_study(workdir: Path, stages: list[str] = LATER_STAGES, run=run_stage) -> None:
    """Stages 08 and 10, and 07 and 09 where ``stages`` has them; ``run`` as in ``run_all``."""
    if "07_models" in stages:
        # one row of the cheapest model, the smallest measurement: a smoke test of the entry point
        run("07_models", workdir, "--quick", "--models", "unet", "--planes", "axial", "--matmul-size", "256",
            "--repeats", "1")
    run("08_training", workdir, *[a for o in STUDY for a in ("--set", o)])
    if "09_comparison" in stages:
        run("09_comparison", workdir)
    run("10_fusion", workdir)


def test_stages_07_to_10_complete_the_study(workdir):
    run_study(workdir)
    for stage in ("07_models", "08_training", "09_comparison", "10_fusion"):
        manifest = json.loads((workdir / stage / "manifest.json").read_text())
        assert manifest["outputs"] and manifest["synthetic_data"] is False
    recorded = json.loads((workdir / "10_fusion" / "config.json").read_text())
    assert recorded["training"]["model_options"] == {"width": 0.125}       # given once, carried to 10
    holdout = pd.read_csv(workdir / "03_convert" / "holdout.csv")["subject_name"]
    fused = pd.read_csv(workdir / "10_fusion" / "subjects.csv")
    assert sorted(fused.loc[fused["mask"] == "fused", "subject_name"]) == sorted(holdout)
    assert set(fused["mask"]) == {"axial", "sagittal", "coronal", "fused"}
    assert len(list((workdir / "10_fusion" / "masks").glob("*_fused_mask.nii.gz"))) == len(holdout)
    assert set(pd.read_csv(workdir / "09_comparison" / "wilcoxon.csv")["model"]) == {"unet"}

    # The demo's report reads every table of the study (its numbers are the CSVs', not typed).
    from strokeseg import demo

    timing = pd.DataFrame({"stage": ["10_fusion", "total"], "seconds": [3.0, 3.0], "peak_rss_gib": [1.0, 1.0]})
    agreement = (len(holdout), len(holdout))
    report = demo.results_markdown(workdir, timing, agreement)
    fused_row = pd.read_csv(workdir / "10_fusion" / "summary.csv").set_index("mask").loc["fused"]
    fused_text = f"{fused_row['dice_mean']:.3f} ± {fused_row['dice_std']:.3f}"
    assert f"| fused | {len(holdout)} | {fused_text} (" in report
    assert report.startswith("Data: `")                         # the tiny cohort came from --atlas-dir
    assert "| axial | " in report and "| unet | " in report and "| dice | axial | " in report
    assert f"Fused 3-D Dice on the {len(holdout)} held-out subjects: {fused_text}" in \
        demo.closing_lines(workdir, timing, agreement)


def test_synthetic_cohort_is_built_reused_and_labelled(tmp_path):
    args = ["--profile", "demo", "--n-subjects", "12", "--downsample", "4", "--workers", "1"]
    run_stage("01_dataset", tmp_path, *args)
    cohort = tmp_path / "01_dataset" / "synthetic_cohort"
    description = json.loads((cohort / "dataset_description.json").read_text())
    assert description["Synthetic"] is True and description["n_subjects"] == 12
    first_t1 = sorted(cohort.rglob("*_T1w.nii.gz"))[0]
    stamp = first_t1.stat().st_mtime_ns
    run_stage("01_dataset", tmp_path, *args)                  # same parameters: reused, not rebuilt
    assert first_t1.stat().st_mtime_ns == stamp
    run_stage("02_splitting", tmp_path)
    for stage in ("01_dataset", "02_splitting"):
        assert json.loads((tmp_path / stage / "manifest.json").read_text())["synthetic_data"] is True
    config = json.loads((tmp_path / "02_splitting" / "config.json").read_text())
    assert config["profile"] == "demo" and config["dataset"]["source"] == "synthetic"
    subjects = pd.read_csv(tmp_path / "01_dataset" / "lesion_information_3d.csv")
    assert len(subjects) == 12 and (subjects["number_of_lesion"] >= 1).all()
    assert subjects["volume_ml"].gt(0).all()                  # physical volume from the 4 mm header


# The second run leaves out the model table (measurements) and the comparison (stage 08's training code
# again, with other models), the two stages the fusion does not need. It runs the same commands in this
# process (cli.main, as `strokeseg <command>`), so it also checks that a stage's outputs do not depend on
# how it was started, and it does not pay eight interpreter start-ups again (two of them import TensorFlow).
REPEATED = [*STAGES, "08_training", "10_fusion"]


def test_a_second_run_writes_byte_identical_csvs_and_figures(workdir, tiny_cohort, tmp_path):
    if not (workdir / "10_fusion" / "manifest.json").is_file():   # this test alone was selected
        run_study(workdir)
    run_all(tmp_path, tiny_cohort, run=in_process)
    run_study(tmp_path, REPEATED, run=in_process)
    first, second = digests(workdir, REPEATED), digests(tmp_path, REPEATED)
    assert first.keys() == second.keys()
    assert sum(name.endswith(".png") for name in first) >= 10 and len(first) > 80
    # Paths to the cohort are the same in both runs, so every file must match.
    assert {name for name in first if first[name] != second[name]} == set()

"""Stages 08 and 09 on the tiny cohort: a training stage killed (SIGKILL) through its run.py entry point
resumes to the same epochs without gaps or duplicates, and both stages publish their tables. Only the
run that is killed needs a process of its own; the other runs call ``strokeseg.cli.run_stage`` (what
run.py calls) in this process, which saves TensorFlow's import per run (test_end_to_end.py runs every
run.py, 08 and 09 included, as a subprocess)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from strokeseg.cli import run_stage

from helpers import EAGER

ROOT = Path(__file__).resolve().parents[2]
# One plane and one fold keep the stage quick; the loop over planes and folds is the same code. Three
# epochs of the whole fold (steps_per_epoch=0, ~2 s each after the first): the kill lands after epoch 1,
# well before epoch 3, and the resumed run still trains one epoch or more.
EPOCHS = 3
TRAINING = ["training.planes=[\"axial\"]", "training.folds=[1]", f"training.max_epochs={EPOCHS}",
            "training.steps_per_epoch=0", "training.validation_steps=1", "training.eval_batch_size=16"]
RUN = Path("08_training/runs/raxnet/axial/fold_1")


def command(stage: str, workdir: Path, overrides=()) -> list[str]:
    return [sys.executable, str(ROOT / stage / "run.py"), "--workdir", str(workdir), "--quiet",
            *[a for o in overrides for a in ("--set", o)]]


def run_ok(command_name: str, workdir: Path, overrides=()) -> None:
    """``strokeseg <command_name> --workdir WORKDIR --quiet --set ...`` in this process, as run.py runs it."""
    argv = ["--workdir", str(workdir), "--quiet", *[a for o in overrides for a in ("--set", o)]]
    assert run_stage(command_name, argv, default_workdir=ROOT) == 0, command_name


def epochs(workdir: Path) -> list[int]:
    path = workdir / RUN / "history.csv"
    return list(pd.read_csv(path)["epoch"]) if path.is_file() else []


@pytest.fixture(scope="module")
def trained(prepared_workdir, tmp_path_factory) -> Path:
    """A copy of the prepared workdir whose stage 08 (run.py, a process of its own) was killed after its
    first epoch, then rerun (in this process)."""
    workdir = tmp_path_factory.mktemp("stage08") / "work"
    shutil.copytree(prepared_workdir, workdir)
    process = subprocess.Popen(command("08_training", workdir, TRAINING), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not epochs(workdir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = epochs(workdir)
    assert process.returncode == -signal.SIGKILL and 1 <= len(killed_at) < EPOCHS, killed_at
    assert not (workdir / "08_training" / "manifest.json").exists()   # nothing published yet
    run_ok("training", workdir, TRAINING)
    return workdir


def test_a_killed_training_stage_resumes_to_the_same_epochs_without_gaps_or_duplicates(trained, prepared_workdir,
                                                                                         tmp_path):
    from strokeseg.stages import s08_training
    from strokeseg.train import experiments, loop

    resumed = pd.read_csv(trained / RUN / "history.csv")
    # The reference: the same run (stage 08's config and run spec) trained straight through by the loop that
    # stage 08 calls, without the stage's evaluation and tables (test_stage_08_publishes_... checks those).
    config = s08_training.starting_config(prepared_workdir, TRAINING)
    training = config.training
    (spec,) = experiments.run_specs(config, experiments.Inputs.of(prepared_workdir), training, training.planes,
                                    training.folds, tmp_path / RUN.parent.parent.parent)
    assert spec.folder == tmp_path / RUN
    loop.train(spec, progress=False)
    uninterrupted = pd.read_csv(spec.folder / "history.csv")
    assert list(resumed["epoch"]) == list(uninterrupted["epoch"]) == list(range(1, EPOCHS + 1))
    columns = ["epoch", "loss", "val_loss", "learning_rate"]
    pd.testing.assert_frame_equal(resumed[columns], uninterrupted[columns], rtol=1e-5)


def test_stage_08_publishes_fold_tables_runs_and_best_folds(trained):
    stage = trained / "08_training"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert "runs" in manifest["outputs"] and manifest["model"] == "raxnet"
    table = pd.read_csv(stage / "axial_folds_results.csv", dtype={"fold": str})
    assert set(table["evaluation"]) == {"slice_upstream", "lesion_slices", "subject_3d"}
    assert list(table.loc[table["evaluation"] == "subject_3d", "fold"]) == ["1", "All"]
    assert table.loc[table["fold"] == "1", "best_fold"].all()
    subjects = pd.read_csv(stage / "test_subjects_3d.csv")
    folds = pd.read_csv(trained / "04_cross_validation" / "folds.csv")
    assert sorted(subjects["subject_name"]) == sorted(folds.loc[folds["fold"] == 1, "subject_name"])  # none dropped
    best = pd.read_csv(stage / "best_folds.csv")
    assert list(best["plane"]) == ["axial"] and (stage / best["model_file"].iloc[0]).is_file()
    runs = pd.read_csv(stage / "runs.csv")
    assert runs["epochs"].tolist() == [EPOCHS] and (stage / "test_dice_3d.png").stat().st_size > 0


# Stage 09's runs at a fraction of the width (the loss comparison trains RAX-Net with training's options):
# what is tested is the protocol around them.
SMALL_MODELS = ["comparison.model_options={\"unet\": {\"base_filters\": 4}}",
                "training.model_options={\"width\": 0.125}"]


def test_stage_09_compares_models_and_losses_through_the_same_protocol(trained):
    run_ok("comparison", trained, ["comparison.models=[\"unet\"]", "comparison.planes=[\"axial\"]",
                                   "comparison.folds=[1]", "comparison.max_epochs=1",
                                   "comparison.losses=[\"dice\",\"tversky_plus_focal\"]",
                                   "comparison.loss_folds=[1]", "comparison.loss_max_epochs=1",
                                   "training.steps_per_epoch=1", EAGER, *SMALL_MODELS])
    stage = trained / "09_comparison"
    summary = pd.read_csv(stage / "model_comparison.csv")
    assert set(summary["model"]) == {"raxnet", "unet"} and set(summary["plane"]) == {"axial"}
    wilcoxon = pd.read_csv(stage / "wilcoxon.csv")
    assert list(wilcoxon["model"]) == ["unet"] and wilcoxon["reference"].eq("raxnet").all()
    assert wilcoxon["n_pairs"].iloc[0] == len(pd.read_csv(trained / "08_training" / "test_subjects_3d.csv"))
    losses = pd.read_csv(stage / "loss_comparison.csv")
    assert set(losses["loss"]) == {"dice", "tversky_plus_focal"}
    assert (stage / "raincloud_dice_axial.png").is_file() and (stage / "loss_raincloud_axial.png").is_file()
    runs = pd.read_csv(stage / "runs.csv")
    assert sorted(runs["comparison"]) == ["loss", "loss", "model"]

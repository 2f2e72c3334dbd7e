"""Runs trained side by side: how many at once, with how many threads, and stage 08 training two runs
in workers. (Workers that die with their stage: tests/test_parallel.py.)"""
from __future__ import annotations

import dataclasses
import shutil

import pandas as pd
import pytest

from strokeseg.cli import run_stage
from strokeseg.config import TrainingConfig, load_profile
from strokeseg.errors import ConfigError
from strokeseg.train.loop import RunSpec
from strokeseg.train.parallel_runs import thread_count, worker_count


def test_each_worker_gets_its_share_of_the_cores():
    assert thread_count(1, cores=2) == 2
    assert thread_count(2, cores=2) == 1
    assert thread_count(3, cores=2) == 1            # never 0
    assert thread_count(2, cores=16) == 8


def test_no_more_workers_than_runs_and_one_in_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert worker_count(3, runs=3) == 3            # no GPU here
    assert worker_count(3, runs=2) == 2
    assert worker_count(1, runs=5) == 1
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", '
                                    '"index": 0}}')
    assert worker_count(3, runs=3) == 1


def test_parallel_runs_is_checked_and_not_part_of_what_a_run_resumes_with(tmp_path):
    assert load_profile("demo").training.parallel_runs == 3 and load_profile("raxnet").training.parallel_runs == 1
    with pytest.raises(ConfigError, match="training.parallel_runs"):
        load_profile("demo", ["training.parallel_runs=0"])

    def spec(parallel: int) -> RunSpec:
        return RunSpec(tmp_path, "axial", 1, 5, dataclasses.replace(TrainingConfig(), parallel_runs=parallel), 7,
                       False, tmp_path / "run")

    assert spec(1).settings() == spec(3).settings()   # a run trained 3 at a time resumes alone


def test_stage_08_trains_two_runs_in_workers_and_collects_both(prepared_workdir, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(prepared_workdir, workdir)
    overrides = ['training.planes=["axial","sagittal"]', "training.folds=[1]", "training.max_epochs=1",
                 "training.steps_per_epoch=1", "training.validation_steps=1", "training.parallel_runs=2",
                 "training.model=unet", 'training.model_options={"base_filters": 2}', "training.tensorboard=false"]
    argv = ["--workdir", str(workdir), "--quiet", *[a for o in overrides for a in ("--set", o)]]
    assert run_stage("training", argv, default_workdir=workdir) == 0
    stage = workdir / "08_training"
    runs = pd.read_csv(stage / "runs.csv")
    assert sorted(runs["plane"]) == ["axial", "sagittal"] and runs["epochs"].tolist() == [1, 1]
    for plane in ("axial", "sagittal"):
        run = stage / "runs" / "unet" / plane / "fold_1"
        assert (run / "best.keras").is_file() and (run / "test_subjects.csv").is_file()
        assert (stage / f"{plane}_folds_results.csv").is_file()


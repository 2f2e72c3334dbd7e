import json
import os

import pandas as pd
import pytest

from strokeseg.config import load_profile, read_config
from strokeseg.errors import InputError, StageOrderError
from strokeseg.workdir import StageWriter, require_stage, stage_config, write_csv

CONFIG = load_profile("demo")


def test_a_finished_stage_publishes_outputs_config_and_manifest(tmp_path):
    with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
        write_csv(pd.DataFrame({"a": [1, 2]}), out.path / "x.csv")
    folder = tmp_path / "02_splitting"
    assert (folder / "x.csv").read_text() == "a\n1\n2\n"
    assert read_config(folder / "config.json") == CONFIG
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["outputs"] == ["x.csv"] and manifest["synthetic_data"] is True
    assert stage_config(tmp_path, "02_splitting") == CONFIG
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]   # no staging left


def test_a_failed_stage_leaves_the_previous_outputs_untouched(tmp_path):
    with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
        (out.path / "x.csv").write_text("old\n")
    with pytest.raises(RuntimeError):
        with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
            (out.path / "x.csv").write_text("half")
            (out.path / "y.csv").write_text("half")
            raise RuntimeError("bad input half-way")
    folder = tmp_path / "02_splitting"
    assert (folder / "x.csv").read_text() == "old\n"
    assert not (folder / "y.csv").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json", "x.csv"]


def test_a_rerun_removes_outputs_the_new_run_no_longer_writes(tmp_path):
    with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
        (out.path / "gone.csv").write_text("1\n")
        (out.path / "sub").mkdir()
    with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
        (out.path / "kept.csv").write_text("2\n")
    names = sorted(p.name for p in (tmp_path / "02_splitting").iterdir())
    assert names == ["config.json", "kept.csv", "manifest.json"]


def test_files_beside_the_outputs_are_left_alone(tmp_path):
    folder = tmp_path / "02_splitting"
    folder.mkdir()
    (folder / "run.py").write_text("# the stage's entry point lives here too\n")
    with StageWriter(tmp_path, "02_splitting", CONFIG) as out:
        (out.path / "x.csv").write_text("1\n")
    assert (folder / "run.py").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_workdir_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            with StageWriter(tmp_path, "02_splitting", CONFIG):
                pass
    finally:
        tmp_path.chmod(0o700)


def test_workdir_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="not writable"):
        with StageWriter(blocker, "02_splitting", CONFIG):
            pass


def test_a_stage_refuses_to_start_before_its_input_stage(tmp_path):
    with pytest.raises(StageOrderError, match="run `python 01_dataset/run.py"):
        require_stage(tmp_path, "01_dataset")


def test_atomic_path_keeps_the_extension_and_leaves_the_old_file_on_failure(tmp_path):
    from strokeseg.workdir import atomic_path

    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp != target
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]

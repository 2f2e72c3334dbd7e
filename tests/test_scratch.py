"""Scratch names carry their owner; a later run removes only the scratch of owners that are gone."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from strokeseg import scratch


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_dead_owner_go_and_everything_else_stays(tmp_path):
    gone = dead_pid()
    mine_folder = Path(tempfile.mkdtemp(prefix=scratch.folder_prefix("staging"), dir=tmp_path))
    mine_file = scratch.file_path(tmp_path / "case_mask.nii.gz")
    mine_file.write_bytes(b"")
    host = scratch.owner_tag().split(".")[0]
    dead = [tmp_path / f".staging-{host}.{gone}-abcd_123", tmp_path / f".cohort-old-{host}.{gone}-zz00zz00",
            tmp_path / f".case_mask.nii.gz.{host}.{gone}-0123456789ab.tmp.nii.gz",
            tmp_path / ".staging-k2j4h5g6",                             # named before owners were recorded
            tmp_path / ".predictions.csv.0123456789ab.tmp.csv"]
    alive_elsewhere = tmp_path / f".staging-{'0' * 8 if host != '0' * 8 else '1' * 8}.{gone}-abcdefgh"
    users = [tmp_path / ".notes.tmp", tmp_path / ".staging-area", tmp_path / "staging-abcdefgh"]
    for path in dead[:2] + dead[3:4] + [alive_elsewhere]:
        path.mkdir()
        (path / "inside.npy").write_bytes(b"x")
    for path in dead[2:3] + dead[4:] + users:
        path.write_bytes(b"x")
    nested = tmp_path / "runs" / "fold_1"
    nested.mkdir(parents=True)
    nested_left = nested / f".model.keras.{host}.{gone}-0123456789ab.tmp.keras"
    nested_left.write_bytes(b"x")

    removed = scratch.remove_leftovers(tmp_path)
    assert sorted(removed) == sorted(dead)
    assert nested_left.exists()                                          # not recursive unless asked
    assert scratch.remove_leftovers(tmp_path, recursive=True) == [nested_left]
    for kept in [mine_folder, mine_file, alive_elsewhere, *users]:
        assert kept.exists(), kept


def test_a_running_owner_keeps_its_scratch(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        host = scratch.owner_tag().split(".")[0]
        running = tmp_path / f".staging-{host}.{sleeper.pid}-abcdefgh"
        running.mkdir()
        assert scratch.remove_leftovers(tmp_path) == [] and running.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert scratch.remove_leftovers(tmp_path) == [running]


def test_scratch_file_names_keep_the_extension_writers_choose_the_format_by():
    assert scratch.file_path(Path("/x/a_mask.nii.gz")).name.endswith(".tmp.nii.gz")
    assert scratch.file_path(Path("/x/predictions.csv")).name.endswith(".tmp.csv")
    assert scratch.is_scratch(scratch.file_path(Path("/x/a.png")).name)
    assert os.path.dirname(scratch.file_path(Path("/x/a.png"))) == "/x"

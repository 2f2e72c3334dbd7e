"""Fault catalogue of the data stages (01-03): each fault a user can cause gives exit status 2 and one line
``error: <path>: <fault>`` naming the file or folder, leaves no scratch, and leaves the earlier good outputs
of the workdir byte for byte as they were.

Every case starts from a copy of one good workdir (stages 01-03 done on a six-subject tiny cohort) and of its
cohort, damages one thing and runs the stage in-process. FIFOs are watched: opening one would hang stage 01,
so a watcher thread unblocks any reader and the case fails instead of hanging.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.cli import main
from strokeseg.data.readers import read_cohort

from conftest import TINY_OVERRIDES, subject_paths, write_tiny_cohort
from faults.catalogue import assert_one_line_error, scratch_left, snapshot

SETTINGS = [a for o in TINY_OVERRIDES for a in ("--set", o)]
N_SUBJECTS = 6
VICTIM = "sub-r002s001"            # the second subject write_tiny_cohort makes
SMALL = (8, 8, 6)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def run(command: str, workdir: Path, *extra: str) -> int:
    first = ["--workers", "1", *SETTINGS] if command == "dataset" else []
    return main([command, "--workdir", str(workdir), "--quiet", *first, *extra])


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, Path]:
    """(cohort, workdir): a tiny ATLAS cohort and a workdir with stages 01, 02 and 03 done on it."""
    root = tmp_path_factory.mktemp("good")
    cohort, workdir = root / "cohort", root / "work"
    write_tiny_cohort(cohort, N_SUBJECTS)
    assert run("dataset", workdir, "--atlas-dir", str(cohort)) == 0
    assert run("splitting", workdir) == 0
    assert run("convert", workdir) == 0
    return cohort, workdir


@pytest.fixture
def copies(good, tmp_path) -> tuple[Path, Path]:
    """Copies of the good cohort and workdir, to damage."""
    cohort, workdir = tmp_path / "cohort", tmp_path / "work"
    shutil.copytree(good[0], cohort, symlinks=True)
    shutil.copytree(good[1], workdir, symlinks=True)
    return cohort, workdir


@contextlib.contextmanager
def fifo_watch(paths):
    """The FIFOs among ``paths`` that the block opened: a thread opens the write end of each whenever a reader
    waits on it (which unblocks the reader), so a regression fails the case instead of hanging it."""
    fifos = [p for p in paths if p.is_fifo()]
    opened: list[Path] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for path in fifos:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)   # ENXIO while nobody reads
                except OSError:
                    continue
                opened.append(path)
                os.close(fd)
            stop.wait(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


def fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def folder(path: Path) -> Path:
    path.unlink()
    path.mkdir()
    (path / "inside.nii.gz").write_bytes(b"")
    return path


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def small_volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SMALL, dtype=np.float32) + 1


def small_mask() -> np.ndarray:
    mask = np.zeros(SMALL, dtype=np.uint8)
    mask[2:5, 2:5, 2:4] = 1
    return mask


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def checked(root: Path, kind: str, n: int) -> Path:
    """``root``, once the reader finds ``n`` subjects in the undamaged tree (names only, no voxels)."""
    assert len(read_cohort(root, kind).subjects) == n
    return root


# --- the damages: each returns (the stage's arguments, the names its one line must hold, the fault) -----------

def atlas(cohort: Path) -> list[str]:
    return ["--atlas-dir", str(cohort)]


def atlas_t1w_missing(cohort, workdir, tmp_path):
    t1w, _ = subject_paths(cohort, VICTIM)
    t1w.unlink()
    return atlas(cohort), [t1w.parent], "no T1w file"


def atlas_t1w_is_a_folder(cohort, workdir, tmp_path):
    return atlas(cohort), [folder(subject_paths(cohort, VICTIM)[0])], "not a regular file (a folder)"


def atlas_t1w_is_a_fifo(cohort, workdir, tmp_path):
    return atlas(cohort), [fifo(subject_paths(cohort, VICTIM)[0])], "not a regular file (a FIFO)"


def atlas_mask_is_a_fifo(cohort, workdir, tmp_path):
    return atlas(cohort), [fifo(subject_paths(cohort, VICTIM)[1])], "not a regular file (a FIFO)"


def atlas_mask_is_a_folder(cohort, workdir, tmp_path):
    return atlas(cohort), [folder(subject_paths(cohort, VICTIM)[1])], "not a regular file (a folder)"


def atlas_mask_missing(cohort, workdir, tmp_path):
    mask = subject_paths(cohort, VICTIM)[1]
    mask.unlink()
    return atlas(cohort), [mask], "missing lesion mask"


def atlas_t1w_twice(cohort, workdir, tmp_path):
    t1w = subject_paths(cohort, VICTIM)[0]
    shutil.copyfile(t1w, t1w.with_name(t1w.name[: -len(".gz")]))          # .nii beside .nii.gz
    return atlas(cohort), [t1w.parent], "2 T1w files"


def atlas_subject_of_other_files(cohort, workdir, tmp_path):
    anat = cohort / "Training" / "R004" / "sub-r004s099" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-r004s099_ses-1_T1w.NII.GZ").write_bytes(b"x")           # not the ATLAS name
    return atlas(cohort), [anat], "no T1w file"


def isles22_tree(root: Path) -> Path:
    for subject in ("sub-1", "sub-2"):
        stem = f"{subject}_ses-1"
        save(root / "rawdata" / subject / "ses-1" / "dwi" / f"{stem}_dwi.nii.gz", small_volume(1))
        save(root / "rawdata" / subject / "ses-1" / "dwi" / f"{stem}_adc.nii.gz", small_volume(2))
        save(root / "derivatives" / subject / "ses-1" / f"{stem}_msk.nii.gz", small_mask())
    return checked(root, "isles22", 2)


def isles22_dwi_is_a_fifo(cohort, workdir, tmp_path):
    root = isles22_tree(tmp_path / "isles")
    path = fifo(root / "rawdata" / "sub-2" / "ses-1" / "dwi" / "sub-2_ses-1_dwi.nii.gz")
    return ["--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def isles22_mask_is_a_fifo(cohort, workdir, tmp_path):
    root = isles22_tree(tmp_path / "isles")
    path = fifo(root / "derivatives" / "sub-2" / "ses-1" / "sub-2_ses-1_msk.nii.gz")
    return ["--dataset", "isles22", "--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def nnunet_tree(root: Path) -> Path:
    meta = {"channel_names": {"0": "DWI"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 2,
            "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in ("case_001", "case_002"):
        save(root / "imagesTr" / f"{case}_0000.nii.gz", small_volume(3))
        save(root / "labelsTr" / f"{case}.nii.gz", small_mask())
    return checked(root, "nnunet", 2)


def nnunet_image_is_a_fifo(cohort, workdir, tmp_path):
    root = nnunet_tree(tmp_path / "Dataset001_Tiny")
    path = fifo(root / "imagesTr" / "case_002_0000.nii.gz")
    return ["--dataset", "nnunet", "--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def nnunet_label_is_a_fifo(cohort, workdir, tmp_path):
    root = nnunet_tree(tmp_path / "Dataset001_Tiny")
    path = fifo(root / "labelsTr" / "case_002.nii.gz")
    return ["--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def nnunet_dataset_json_is_a_fifo(cohort, workdir, tmp_path):
    root = nnunet_tree(tmp_path / "Dataset001_Tiny")
    path = fifo(root / "dataset.json")
    return ["--dataset", "nnunet", "--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def png_tree(root: Path) -> Path:
    for n in (1, 2, 3):
        image = ((np.arange(30).reshape(6, 5) * 7 + 11 * n) % 251).astype(np.uint8)
        mask = np.zeros((6, 5), dtype=np.uint8)
        mask[n, : n + 1] = 255
        write_image(root / "images" / "p01" / f"{n}.png", image)
        write_image(root / "masks" / "p01" / f"{n}.png", mask)
    return checked(root, "png_slices", 1)


def png_last_slice_is_a_fifo(cohort, workdir, tmp_path):
    root = png_tree(tmp_path / "ct")
    fifo(root / "masks" / "p01" / "3.png")
    path = fifo(root / "images" / "p01" / "3.png")       # was: the slice left out, exit 0
    return ["--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def png_slice_is_a_folder(cohort, workdir, tmp_path):
    root = png_tree(tmp_path / "ct")
    path = folder(root / "masks" / "p01" / "3.png")
    return ["--dataset", "png_slices", "--data-dir", str(root)], [path], "not a regular file (a folder)"


def kaggle_tree(root: Path) -> Path:
    patient = "TCGA_CS_4941_19960909"
    for n in (1, 2, 3):
        image = np.stack([((np.arange(30).reshape(6, 5) * (3 + c) + 11 * n) % 251) for c in range(3)], -1)
        mask = np.zeros((6, 5), dtype=np.uint8)
        mask[n, : n + 1] = 255
        write_image(root / patient / f"{patient}_{n}.tif", image.astype(np.uint8))
        write_image(root / patient / f"{patient}_{n}_mask.tif", mask)
    return checked(root, "kaggle_3m", 1)


def kaggle_slice_is_a_fifo(cohort, workdir, tmp_path):
    root = kaggle_tree(tmp_path / "kaggle_3m")
    patient = root / "TCGA_CS_4941_19960909"
    fifo(patient / "TCGA_CS_4941_19960909_3_mask.tif")
    path = fifo(patient / "TCGA_CS_4941_19960909_3.tif")
    return ["--dataset", "kaggle_3m", "--data-dir", str(root)], [path], "not a regular file (a FIFO)"


def synthetic_workdir_below_a_file(cohort, workdir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return ["--n-subjects", "4", "--downsample", "8", "--workdir", str(blocker / "work")], [blocker], \
        "workdir is not writable"


def atlas_workdir_below_a_file(cohort, workdir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return [*atlas(cohort), "--workdir", str(blocker / "work")], [blocker], "workdir is not writable"


STAGE_01 = [atlas_t1w_missing, atlas_t1w_is_a_folder, atlas_t1w_is_a_fifo, atlas_mask_is_a_fifo,
            atlas_mask_is_a_folder, atlas_mask_missing, atlas_t1w_twice, atlas_subject_of_other_files,
            isles22_dwi_is_a_fifo, isles22_mask_is_a_fifo, nnunet_image_is_a_fifo, nnunet_label_is_a_fifo,
            nnunet_dataset_json_is_a_fifo, png_last_slice_is_a_fifo, png_slice_is_a_folder, kaggle_slice_is_a_fifo,
            synthetic_workdir_below_a_file, atlas_workdir_below_a_file]


@pytest.mark.parametrize("damage", STAGE_01, ids=lambda f: f.__name__)
def test_stage_01_fault(damage, copies, tmp_path, capsys):
    cohort, workdir = copies
    args, names, fault = damage(cohort, workdir, tmp_path)
    before = snapshot(tmp_path)
    with fifo_watch(names) as opened:
        code = run("dataset", workdir, *args)       # a later --workdir in args wins
    line = assert_one_line_error(capsys.readouterr().err, *names, fault)
    assert code == 2, line
    assert not opened, f"a FIFO was opened: {opened}"
    assert scratch_left(tmp_path) == []
    assert snapshot(tmp_path) == before             # the earlier stages 01-03 and the cohort, byte for byte


# --- stages 02 and 03 on stage 01's CSVs cut short or edited by hand --------------------------------------

def subjects_csv(workdir: Path) -> Path:
    return workdir / "01_dataset" / "lesion_information_3d.csv"


def column_cut_away(workdir):
    path = subjects_csv(workdir)
    pd.read_csv(path).drop(columns=["volume_bin"]).to_csv(path, index=False)
    return "splitting", [path, "missing column(s) volume_bin"]


def rows_cut_mid_line(workdir):
    path = subjects_csv(workdir)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])     # the header and 3.5 rows
    return "splitting", [path, "line 5: no value in column(s) volume_bin"]


def header_cut_mid_line(workdir):
    path = subjects_csv(workdir)
    path.write_text(path.read_text().split("lesion_size_5")[0])
    return "splitting", [path, "missing column(s) volume_bin"]


def rows_cut_away(workdir):
    path = subjects_csv(workdir)
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    return "splitting", [path, "0 rows"]


def plane_csv_column_cut_away(workdir):
    path = workdir / "01_dataset" / "lesion_information_axial.csv"
    pd.read_csv(path).drop(columns=["slice_bin"]).to_csv(path, index=False)
    return "splitting", [path, "missing column(s) slice_bin"]


def cohort_csv_column_cut_away(workdir):
    path = workdir / "01_dataset" / "cohort.csv"
    pd.read_csv(path).drop(columns=["mask"]).to_csv(path, index=False)
    return "convert", [path, "missing column(s) mask"]


@pytest.mark.parametrize("damage", [column_cut_away, rows_cut_mid_line, header_cut_mid_line, rows_cut_away,
                                    plane_csv_column_cut_away, cohort_csv_column_cut_away],
                         ids=lambda f: f.__name__)
def test_damaged_stage_01_csv(damage, copies, capsys):
    _, workdir = copies
    command, names = damage(workdir)
    before = snapshot(workdir)
    code = run(command, workdir)
    line = assert_one_line_error(capsys.readouterr().err, *names)
    assert code == 2, line
    assert scratch_left(workdir) == []
    assert snapshot(workdir) == before              # the earlier good 02 and 03 outputs, byte for byte


# --- a read-only workdir: nothing created, one line --------------------------------------------------------

@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("source", ["synthetic", "atlas"])
@pytest.mark.parametrize("earlier", [False, True], ids=["empty", "with_outputs"])
def test_read_only_workdir(source, earlier, copies, tmp_path, capsys):
    cohort, workdir = copies
    if not earlier:
        shutil.rmtree(workdir)
        workdir.mkdir()
    folders = [workdir] + [Path(root, d) for root, dirs, _ in os.walk(workdir) for d in dirs]
    for path in folders:
        path.chmod(0o555)
    before = snapshot(workdir)
    try:
        args = ["--n-subjects", "4", "--downsample", "8"] if source == "synthetic" else atlas(cohort)
        code = run("dataset", workdir, *args)
        line = assert_one_line_error(capsys.readouterr().err, workdir / "01_dataset", "not writable")
        assert code == 2, line
        assert snapshot(workdir) == before
        if not earlier:
            assert list(workdir.iterdir()) == []
    finally:
        for path in folders:
            path.chmod(0o755)


# --- what the discovery rule accepts ------------------------------------------------------------------------

def test_nii_t1w_and_nii_mask_are_read_like_nii_gz(good, copies, capsys):
    """A T1w saved as .nii, another subject's mask as .nii: every subject is read, the statistics unchanged."""
    cohort, workdir = copies
    t1w, _ = subject_paths(cohort, VICTIM)
    _, mask = subject_paths(cohort, "sub-r001s000")
    for path in (t1w, mask):
        nib.save(nib.load(path), path.with_name(path.name[: -len(".gz")]))
        path.unlink()
    assert run("dataset", workdir, *atlas(cohort)) == 0, capsys.readouterr().err
    files = pd.read_csv(workdir / "01_dataset" / "cohort.csv").set_index("subject_name")
    assert len(files) == N_SUBJECTS
    assert files.loc[VICTIM, "t1w"].endswith("_T1w.nii") and files.loc["sub-r001s000", "mask"].endswith("_mask.nii")
    assert subjects_csv(workdir).read_bytes() == subjects_csv(good[1]).read_bytes()

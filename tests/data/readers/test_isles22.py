"""ISLES'22 reader: the real shared case, small written BIDS trees, the FLAIR resampling."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.data.readers import ReaderOptions, isles22
from strokeseg.data.resample import to_grid
from strokeseg.errors import InputError

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "isles22"
REAL_SESSION = Path("rawdata") / "sub-strokecase0009" / "ses-0001"
REAL_MASK = Path("derivatives") / "sub-strokecase0009" / "ses-0001" / "sub-strokecase0009_ses-0001_msk.nii.gz"

SHAPE = (8, 8, 6)
DWI_AFFINE = np.array([[-2.0, 0, 0, 8], [0, 2.0, 0, -8], [0, 0, 2.0, -6], [0, 0, 0, 1]])
# FLAIR: finer in-plane, thicker slices, shifted: another grid over the same world space
FLAIR_SHAPE = (12, 12, 3)
FLAIR_AFFINE = np.array([[-1.5, 0, 0, 9], [0, 1.5, 0, -9], [0, 0, 4.0, -7], [0, 0, 0, 1]])


def real_root() -> Path:
    if not (REAL / REAL_SESSION).is_dir():
        pytest.skip("shared ISLES'22 case not present")
    return REAL.resolve()


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _world_x(shape, affine) -> np.ndarray:
    """Each voxel's world x coordinate: a linear field that trilinear resampling reproduces exactly."""
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[0, :3] @ ijk + affine[0, 3]).reshape(shape).astype(np.float32)


def write_session(root: Path, subject: str, session: str, *, adc: bool = True, mask: bool = True,
                  names: dict[str, str] | None = None) -> Path:
    """One session in the full release's layout: dwi/ (DWI, ADC), anat/ (FLAIR), derivatives/.../anat/ mask."""
    names = {"dwi": "dwi.nii.gz", "adc": "adc.nii.gz", "flair": "FLAIR.nii.gz", **(names or {})}
    folder = root / "rawdata" / subject / session
    stem = f"{subject}_{session}"
    rng = np.random.default_rng(0)
    _save(folder / "dwi" / f"{stem}_{names['dwi']}", rng.random(SHAPE, dtype=np.float32), DWI_AFFINE)
    if adc:
        _save(folder / "dwi" / f"{stem}_{names['adc']}", rng.random(SHAPE, dtype=np.float32), DWI_AFFINE)
    _save(folder / "anat" / f"{stem}_{names['flair']}", _world_x(FLAIR_SHAPE, FLAIR_AFFINE), FLAIR_AFFINE)
    (folder / "dwi" / f"{stem}_dwi.json").write_text("{}")           # sidecars are ignored
    if mask:
        lesion = np.zeros(SHAPE, dtype=np.uint8)
        lesion[3:5, 3:5, 2:4] = 1
        _save(root / "derivatives" / subject / session / "anat" / f"{stem}_msk.nii.gz", lesion, DWI_AFFINE)
    return folder


@pytest.fixture
def tree(tmp_path) -> Path:
    """sub-001 with two sessions, sub-002 with one; mixed-case FLAIR names, one .nii file."""
    write_session(tmp_path, "sub-001", "ses-01")
    write_session(tmp_path, "sub-001", "ses-02", names={"flair": "Flair.nii"})
    write_session(tmp_path, "sub-002", "ses-01")
    return tmp_path


# ------------------------------------------------------------------------------------ real case

def test_real_case_reads_dwi_and_adc_with_its_mask():
    root = real_root()
    assert isles22.matches(root) and isles22.matches(root / "rawdata")
    cohort = isles22.read(root, ReaderOptions())
    assert (cohort.kind, cohort.root, cohort.channels, cohort.channel_kinds) == ("isles22", root, ("dwi", "adc"),
                                                                                  ("mr", "mr"))
    assert cohort.materialise is None and not cohort.allow_empty_masks
    [subject] = cohort.subjects
    assert (subject.subject, subject.group, subject.site) == ("sub-strokecase0009", "sub-strokecase0009", "")
    session = root / REAL_SESSION
    assert subject.channels == (("dwi", session / "sub-strokecase0009_ses-0001_dwi.nii.gz"),
                                ("adc", session / "sub-strokecase0009_ses-0001_adc.nii.gz"))
    assert subject.mask == root / REAL_MASK
    # given rawdata/ itself, the reader uses its parent
    assert isles22.read(root / "rawdata", ReaderOptions()).subjects == cohort.subjects


def test_real_flair_is_refused_without_resample_flair():
    root = real_root()
    with pytest.raises(InputError) as caught:
        isles22.read(root, ReaderOptions(channels=("dwi", "flair")))
    assert caught.value.path == str(root)
    assert "FLAIR is on another grid" in caught.value.fault and "--resample-flair" in caught.value.fault
    assert "\n" not in str(caught.value)


def test_real_flair_is_resampled_onto_the_dwi_grid(tmp_path, caplog):
    root = real_root()
    cohort = isles22.read(root, ReaderOptions(channels=("dwi", "adc", "flair"), resample_flair=True))
    assert cohort.channels == ("dwi", "adc", "flair") and cohort.materialise is isles22.materialise
    assert any("not registration" in note for note in cohort.notes)
    [subject] = cohort.subjects
    with caplog.at_level(logging.WARNING, logger="strokeseg.data.readers.isles22"):
        done = cohort.materialise(subject, tmp_path)
    assert "not registration" in caplog.text
    out = tmp_path / "sub-strokecase0009_flair.nii.gz"
    assert done.channels == (subject.channels[0], subject.channels[1], ("flair", out))
    assert done.mask == subject.mask and done.subject == subject.subject
    dwi, flair = nib.load(subject.channel("dwi")), nib.load(out)
    assert flair.shape == dwi.shape == (112, 112, 73)
    assert np.allclose(flair.affine, dwi.affine, atol=1e-5)
    assert flair.get_data_dtype() == np.float32
    data = np.asanyarray(flair.dataobj)
    source = np.asanyarray(nib.load(subject.channel("flair")).dataobj)
    # trilinear: no overshoot; the FLAIR's thin slab covers only part of the DWI volume (0 outside)
    assert 0 < np.count_nonzero(data) < data.size
    assert data.min() >= min(source.min(), 0) and data.max() <= source.max()


# ------------------------------------------------------------------------------- written trees

def test_release_layout_with_two_sessions(tree):
    assert isles22.matches(tree)
    cohort = isles22.read(tree, ReaderOptions())
    assert [(s.subject, s.group) for s in cohort.subjects] == [
        ("sub-001_ses-01", "sub-001"), ("sub-001_ses-02", "sub-001"), ("sub-002", "sub-002")]
    first = cohort.subjects[0]
    dwi = tree / "rawdata" / "sub-001" / "ses-01" / "dwi"
    assert first.channels == (("dwi", dwi / "sub-001_ses-01_dwi.nii.gz"), ("adc", dwi / "sub-001_ses-01_adc.nii.gz"))
    assert first.mask == tree / "derivatives" / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_msk.nii.gz"
    assert any("several sessions" in note for note in cohort.notes)


def test_channels_in_the_given_order_with_mixed_case_flair(tree, tmp_path, caplog):
    cohort = isles22.read(tree, ReaderOptions(channels=("flair", "DWI"), resample_flair=True))
    assert cohort.channels == ("flair", "dwi")
    second = cohort.subjects[1]
    anat = tree / "rawdata" / "sub-001" / "ses-02" / "anat"
    assert second.channels[0] == ("flair", anat / "sub-001_ses-02_Flair.nii")
    pickle.dumps(cohort.materialise)          # stage 01 hands it to worker processes
    with caplog.at_level(logging.WARNING):
        done = cohort.materialise(second, tmp_path / "out")
    assert "not registration" in caplog.text
    out = tmp_path / "out" / "sub-001_ses-02_flair.nii.gz"
    assert done.channels == (("flair", out), second.channels[1])
    img = nib.load(out)
    assert img.shape == SHAPE and np.allclose(img.affine, DWI_AFFINE)
    data = np.asanyarray(img.dataobj)
    # the FLAIR holds each voxel's world x: inside its field of view, the DWI voxel's own world x comes back
    inside = data != 0
    assert inside.sum() > data.size // 3
    assert np.allclose(data[inside], _world_x(SHAPE, DWI_AFFINE)[inside], atol=1e-4)


def test_resample_onto_is_zero_outside_and_exact_on_the_same_grid():
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    assert np.array_equal(to_grid(data, DWI_AFFINE, SHAPE, DWI_AFFINE), data)
    far = DWI_AFFINE.copy()
    far[:3, 3] += 1000.0
    assert not to_grid(data, DWI_AFFINE, SHAPE, far).any()


def test_missing_adc_names_the_session(tree):
    folder = write_session(tree, "sub-003", "ses-01", adc=False)
    with pytest.raises(InputError) as caught:
        isles22.read(tree, ReaderOptions())
    assert caught.value.path == str(folder) and "no adc file" in caught.value.fault


def test_missing_mask_names_the_derivatives_folder(tree):
    write_session(tree, "sub-003", "ses-01", mask=False)
    with pytest.raises(InputError) as caught:
        isles22.read(tree, ReaderOptions())
    assert caught.value.path == str(tree / "derivatives" / "sub-003" / "ses-01")
    assert "mask" in caught.value.fault


def test_two_files_for_one_channel(tree):
    folder = tree / "rawdata" / "sub-002" / "ses-01"
    _save(folder / "sub-002_ses-01_DWI.nii", np.ones(SHAPE, np.float32), DWI_AFFINE)
    with pytest.raises(InputError) as caught:
        isles22.read(tree, ReaderOptions())
    assert caught.value.path == str(folder)
    assert "2 files for channel dwi" in caught.value.fault
    assert "sub-002_ses-01_DWI.nii" in caught.value.fault and "dwi/sub-002_ses-01_dwi.nii.gz" in caught.value.fault


def test_no_subjects_and_unknown_channel(tmp_path):
    (tmp_path / "rawdata").mkdir()
    assert not isles22.matches(tmp_path)
    with pytest.raises(InputError, match="no subjects found") as caught:
        isles22.read(tmp_path, ReaderOptions())
    assert caught.value.path == str(tmp_path / "rawdata")
    with pytest.raises(InputError, match="unknown ISLES'22 channel 't1'"):
        isles22.read(tmp_path, ReaderOptions(channels=("dwi", "t1")))


def test_matches_survives_unreadable_trees(tree, monkeypatch):
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    assert isles22.matches(tree) is False
    assert isles22.matches(tree / "does-not-exist") is False


@pytest.mark.parametrize("where", ["dwi", "adc_in_session", "mask"])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_chosen_file_that_is_not_a_regular_file_is_an_error_naming_it(tree, where, kind):
    """Never skipped (a 'no dwi file' that names the session) and never opened (a FIFO would block)."""
    session = tree / "rawdata" / "sub-002" / "ses-01"
    path = {"dwi": session / "dwi" / "sub-002_ses-01_dwi.nii.gz",
            "adc_in_session": session / "sub-002_ses-01_adc.nii.gz",      # directly in the session folder
            "mask": tree / "derivatives" / "sub-002" / "ses-01" / "anat" / "sub-002_ses-01_msk.nii.gz"}[where]
    if where == "adc_in_session":
        (session / "dwi" / "sub-002_ses-01_adc.nii.gz").unlink()
    else:
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(InputError) as caught:
        isles22.read(tree, ReaderOptions())
    assert caught.value.path == str(path)
    assert caught.value.fault == f"not a regular file ({'a FIFO' if kind == 'fifo' else 'a folder'})"

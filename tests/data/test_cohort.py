import os
from pathlib import Path

import pytest

from strokeseg.data.cohort import (
    MASK_STEM,
    MASK_SUFFIX,
    T1W_STEM,
    T1W_SUFFIX,
    SubjectFiles,
    cohort_frame,
    discover,
    site_of,
)
from strokeseg.data.readers import atlas as atlas_reader
from strokeseg.data.readers import detect
from strokeseg.errors import InputError


def add_subject(training: Path, subject: str, session: str = "ses-1", mask: bool = True,
                site: str | None = None) -> Path:
    site = site or site_of(subject)
    anat = training / site / subject / session / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    stem = f"{subject}_{session}"
    (anat / f"{stem}{T1W_SUFFIX}").write_bytes(b"t1")
    if mask:
        (anat / f"{stem}{MASK_SUFFIX}").write_bytes(b"mask")
    return anat


@pytest.fixture
def atlas(tmp_path):
    root = tmp_path / "data" / "ATLAS_2"
    training = root / "Training"
    for subject in ("sub-r002s010", "sub-r001s002", "sub-r001s001", "sub-r034s005"):
        add_subject(training, subject)
    (training / "dataset_description.json").write_text("{}")
    return root


def test_site_of():
    assert site_of("sub-r001s001") == "R001"
    assert site_of("sub-r034s112") == "R034"
    with pytest.raises(ValueError):
        site_of("sub-01")


@pytest.mark.parametrize("where", ["root", "training", "above"])
def test_discover_from_root_training_or_above(atlas, where):
    folder = {"root": atlas, "training": atlas / "Training", "above": atlas.parent.parent}[where]
    subjects = discover(folder)
    assert [s.subject for s in subjects] == ["sub-r001s001", "sub-r001s002", "sub-r002s010", "sub-r034s005"]
    assert [s.site for s in subjects] == ["R001", "R001", "R002", "R034"]
    first = subjects[0]
    assert isinstance(first, SubjectFiles)
    assert first.t1w == atlas / "Training/R001/sub-r001s001/ses-1/anat" / f"sub-r001s001_ses-1{T1W_SUFFIX}"
    assert first.mask == first.t1w.parent / f"sub-r001s001_ses-1{MASK_SUFFIX}"
    assert subjects == sorted(subjects)


def test_hidden_folders_and_other_files_are_ignored(atlas):
    add_subject(atlas / ".snapshot" / "Training", "sub-r009s009")
    anat = atlas / "Training/R001/sub-r001s001/ses-1/anat"
    (anat / "sub-r001s001_ses-1_space-orig_T1w.nii.gz").write_bytes(b"other space")
    (atlas / "Training/R001/sub-r001s001/notes_T1w.nii.gz").write_bytes(b"not in anat")
    assert len(discover(atlas)) == 4


def test_cohort_frame(atlas):
    frame = cohort_frame(discover(atlas))
    assert list(frame.columns) == ["subject_name", "site", "t1w", "mask"]
    assert frame["subject_name"].tolist()[0] == "sub-r001s001"
    assert frame["site"].tolist() == ["R001", "R001", "R002", "R034"]
    assert all(isinstance(v, str) and v.endswith(T1W_SUFFIX) for v in frame["t1w"])
    assert all(isinstance(v, str) and v.endswith(MASK_SUFFIX) for v in frame["mask"])
    assert list(cohort_frame([]).columns) == ["subject_name", "site", "t1w", "mask"]


def test_missing_mask_names_the_expected_file(atlas):
    anat = add_subject(atlas / "Training", "sub-r005s001", mask=False)
    with pytest.raises(InputError) as info:
        discover(atlas)
    expected = anat / f"sub-r005s001_ses-1{MASK_SUFFIX}"
    assert str(info.value) == f"{expected}: missing lesion mask for sub-r005s001"


def test_no_files_and_missing_folder(tmp_path):
    (tmp_path / "empty" / "Training").mkdir(parents=True)
    with pytest.raises(InputError, match="no ATLAS T1w files found") as info:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(InputError, match="folder not found") as info:
        discover(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        discover(tmp_path / "file.txt")


def test_duplicate_subject_names_both_files(atlas):
    add_subject(atlas / "Training", "sub-r001s001", site="R099")
    with pytest.raises(InputError, match="found twice") as info:
        discover(atlas)
    message = str(info.value)
    assert "R001/sub-r001s001" in message and "R099/sub-r001s001" in message
    assert "\n" not in message


def test_several_sessions_is_an_error(atlas):
    add_subject(atlas / "Training", "sub-r001s001", session="ses-2")
    with pytest.raises(InputError, match="several sessions") as info:
        discover(atlas)
    assert "ses-1" in str(info.value) and "ses-2" in str(info.value)


def test_file_name_must_match_folders(atlas):
    anat = atlas / "Training/R001/sub-r001s001/ses-1/anat"
    (anat / f"sub-r001s001_ses-1{T1W_SUFFIX}").rename(anat / f"sub-r001s999_ses-1{T1W_SUFFIX}")
    with pytest.raises(InputError, match="does not match its folders"):
        discover(atlas)


# --- the discovery rule: every sub-*/ses-*/anat folder with visible entries is a subject or an error ---------

def test_nii_and_nii_gz_are_both_accepted_for_the_t1w_and_the_mask(atlas):
    anat = atlas / "Training/R001/sub-r001s001/ses-1/anat"
    stem = "sub-r001s001_ses-1"
    (anat / f"{stem}{T1W_SUFFIX}").rename(anat / f"{stem}{T1W_STEM}.nii")
    other = atlas / "Training/R002/sub-r002s010/ses-1/anat"
    (other / f"sub-r002s010_ses-1{MASK_SUFFIX}").rename(other / f"sub-r002s010_ses-1{MASK_STEM}.nii")
    subjects = {s.subject: s for s in discover(atlas)}
    assert len(subjects) == 4
    assert subjects["sub-r001s001"].t1w.name == f"{stem}{T1W_STEM}.nii"
    assert subjects["sub-r001s001"].mask.name == f"{stem}{MASK_SUFFIX}"                # the other ending
    assert subjects["sub-r002s010"].mask.name == f"sub-r002s010_ses-1{MASK_STEM}.nii"
    assert atlas_reader.matches(atlas)


def test_a_tree_of_nii_files_is_detected_as_atlas(tmp_path):
    anat = tmp_path / "Training/R001/sub-r001s001/ses-1/anat"
    anat.mkdir(parents=True)
    (anat / f"sub-r001s001_ses-1{T1W_STEM}.nii").write_bytes(b"t1")
    (anat / f"sub-r001s001_ses-1{MASK_STEM}.nii").write_bytes(b"mask")
    assert detect(tmp_path) == "atlas"
    assert [s.subject for s in discover(tmp_path)] == ["sub-r001s001"]


@pytest.mark.parametrize("content", ["nothing", "hidden"])
def test_an_anat_folder_without_visible_entries_is_not_a_subject(atlas, content):
    anat = atlas / "Training/R005/sub-r005s001/ses-1/anat"
    anat.mkdir(parents=True)
    if content == "hidden":
        (anat / ".DS_Store").write_bytes(b"x")
    assert len(discover(atlas)) == 4


@pytest.mark.parametrize("what", ["missing", "other_files", "wrong_case", "folder_of_other_name"])
def test_an_anat_folder_without_its_t1w_is_an_error_naming_it(atlas, what):
    anat = atlas / "Training/R001/sub-r001s001/ses-1/anat"
    t1w = anat / f"sub-r001s001_ses-1{T1W_SUFFIX}"
    t1w.unlink()
    if what == "other_files":
        (anat / "notes.txt").write_text("x")
        (anat / f"sub-r001s001_ses-1{MASK_SUFFIX}").unlink()
    elif what == "wrong_case":
        (anat / f"sub-r001s001_ses-1{T1W_SUFFIX.upper()}").write_bytes(b"t1")
    elif what == "folder_of_other_name":
        (anat / f"sub-r001s001_ses-1{MASK_SUFFIX}").unlink()
        (anat / "extra").mkdir()
    with pytest.raises(InputError, match="no T1w file") as info:
        discover(atlas)
    assert info.value.path == str(anat)
    assert f"sub-r001s001_ses-1{T1W_STEM}.nii.gz or .nii" in str(info.value)


@pytest.mark.parametrize("which", ["t1w", "mask"])
@pytest.mark.parametrize("kind", ["folder", "fifo", "broken link"])
def test_a_t1w_or_mask_that_is_not_a_regular_file_is_an_error(atlas, which, kind):
    anat = atlas / "Training/R002/sub-r002s010/ses-1/anat"
    path = anat / f"sub-r002s010_ses-1{T1W_SUFFIX if which == 't1w' else MASK_SUFFIX}"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)           # discover only looks at it: opening it would block this test
    else:
        path.symlink_to(anat / "nowhere.nii.gz")
    expected = {"folder": "a folder", "fifo": "a FIFO", "broken link": "a broken symbolic link"}[kind]
    with pytest.raises(InputError) as info:
        discover(atlas)
    assert str(info.value) == f"{path}: not a regular file ({expected})"


def test_a_link_to_a_regular_file_is_a_regular_file(atlas, tmp_path):
    anat = atlas / "Training/R002/sub-r002s010/ses-1/anat"
    t1w = anat / f"sub-r002s010_ses-1{T1W_SUFFIX}"
    elsewhere = tmp_path / "stored_t1w.nii.gz"
    t1w.rename(elsewhere)
    t1w.symlink_to(elsewhere)
    assert {s.subject: s for s in discover(atlas)}["sub-r002s010"].t1w == t1w


@pytest.mark.parametrize("which", ["t1w", "mask"])
def test_both_endings_at_once_is_an_error(atlas, which):
    anat = atlas / "Training/R002/sub-r002s010/ses-1/anat"
    stem = f"sub-r002s010_ses-1{T1W_STEM if which == 't1w' else MASK_STEM}"
    (anat / f"{stem}.nii").write_bytes(b"copy")
    with pytest.raises(InputError, match=r"2 (T1w|lesion mask) files") as info:
        discover(atlas)
    assert info.value.path == str(anat)
    assert f"{stem}.nii," in str(info.value) and f"{stem}.nii.gz" in str(info.value)


def test_an_unreadable_subject_folder_is_an_error_not_a_subject_fewer(atlas, monkeypatch):
    subject = atlas / "Training/R034/sub-r034s005"
    listing = os.scandir

    def scandir(path="."):        # what a folder without read permission gives (root reads any folder)
        if Path(path) == subject:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="cannot read folder") as info:
        discover(atlas)
    assert info.value.path == str(subject)
    (atlas / "Training/R034/notes").mkdir()
    subject = atlas / "Training/R034/notes"          # not a folder of the layout: skipped as before
    assert len(discover(atlas)) == 4

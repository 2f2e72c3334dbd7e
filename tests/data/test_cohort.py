from pathlib import Path

import pytest

from strokeseg.data.cohort import (
    MASK_SUFFIX,
    T1W_SUFFIX,
    SubjectFiles,
    cohort_frame,
    discover,
    site_of,
)
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

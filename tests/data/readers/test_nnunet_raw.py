"""nnU-Net v2 raw reader on small datasets the tests write (dataset.json, imagesTr/, labelsTr/)."""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.data.readers import ReaderOptions, nnunet_raw
from strokeseg.errors import InputError

SHAPE = (8, 8, 6)
AFFINE = np.array([[1.5, 0, 0, -6], [0, 1.5, 0, -6], [0, 0, 2.0, -6], [0, 0, 0, 1]])
CASES = ("case_002", "case_001", "case_003")            # written out of order: the reader sorts


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def label_map() -> np.ndarray:
    """0 background, 1 in one block, 2 in another."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[5:7, 4:7, 2:5] = 2
    return labels


def write_dataset(root: Path, meta: dict | None = None, cases=CASES, n_channels: int = 2) -> Path:
    meta = {"channel_names": {"0": "DWI", "1": "T2-FLAIR"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": len(cases), "file_ending": ".nii.gz", **(meta or {})}
    meta = {key: value for key, value in meta.items() if value is not None}    # None: leave the key out
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    for case in cases:
        for index in range(n_channels):
            _save(root / "imagesTr" / f"{case}_{index:04d}.nii.gz", rng.random(SHAPE, dtype=np.float32))
        _save(root / "labelsTr" / f"{case}.nii.gz", label_map())
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "Dataset042_Stroke")


def _error(root: Path, options: ReaderOptions | None = None) -> InputError:
    with pytest.raises(InputError) as caught:
        nnunet_raw.read(root, options or ReaderOptions())
    assert "\n" not in str(caught.value)
    return caught.value


def test_two_channel_dataset(dataset):
    assert nnunet_raw.matches(dataset)
    cohort = nnunet_raw.read(dataset, ReaderOptions())
    assert (cohort.kind, cohort.root, cohort.channels, cohort.channel_kinds) == (
        "nnunet", dataset, ("dwi", "t2_flair"), ("mr", "mr"))
    assert cohort.allow_empty_masks and cohort.materialise is None
    assert [s.subject for s in cohort.subjects] == ["case_001", "case_002", "case_003"]
    first = cohort.subjects[0]
    assert (first.group, first.site) == ("case_001", "")
    assert first.channels == (("dwi", dataset / "imagesTr" / "case_001_0000.nii.gz"),
                              ("t2_flair", dataset / "imagesTr" / "case_001_0001.nii.gz"))
    assert first.mask == dataset / "labelsTr" / "case_001.nii.gz"


def test_chosen_channels_and_legacy_modality(tmp_path):
    root = write_dataset(tmp_path / "Dataset001_Old", {"channel_names": None, "modality": {"0": "CT", "1": "T1w"}})
    cohort = nnunet_raw.read(root, ReaderOptions(channels=("t1w", "ct")))
    assert cohort.channels == ("t1w", "ct") and cohort.channel_kinds == ("t1", "ct")
    assert cohort.subjects[0].channels[0] == ("t1w", root / "imagesTr" / "case_001_0001.nii.gz")


def test_channel_names_and_kinds():
    assert [nnunet_raw.channel_name(n) for n in ("DWI", "T2-FLAIR", "ADC map", "3D T1", "CT")] == [
        "dwi", "t2_flair", "adc_map", "ch_3d_t1", "ct"]
    assert [nnunet_raw.channel_kind(n) for n in ("ct", "t1", "t1w", "dwi", "t2_flair")] == [
        "ct", "t1", "t1", "mr", "mr"]


def test_duplicate_channel_names(tmp_path):
    root = write_dataset(tmp_path / "D", {"channel_names": {"0": "T2 FLAIR", "1": "t2-flair"}})
    error = _error(root)
    assert error.path == str(root / "dataset.json") and "both become channel name 't2_flair'" in error.fault


def test_missing_channel_file_names_the_expected_file(dataset):
    (dataset / "imagesTr" / "case_002_0001.nii.gz").unlink()
    error = _error(dataset)
    assert error.path == str(dataset / "imagesTr" / "case_002_0001.nii.gz")
    assert "channel file not found" in error.fault


def test_channel_index_beyond_the_channels(dataset):
    stray = _save(dataset / "imagesTr" / "case_001_0002.nii.gz", np.ones(SHAPE, np.float32))
    error = _error(dataset)
    assert error.path == str(stray) and "beyond the 2 channels" in error.fault


def test_labels_and_images_must_pair(dataset):
    (dataset / "labelsTr" / "case_003.nii.gz").unlink()
    error = _error(dataset)
    assert error.path == str(dataset / "labelsTr" / "case_003.nii.gz") and "label file not found" in error.fault
    stray = _save(dataset / "labelsTr" / "case_009.nii.gz", label_map())
    _save(dataset / "labelsTr" / "case_003.nii.gz", label_map())
    error = _error(dataset)
    assert error.path == str(stray) and "without images" in error.fault


def test_unknown_label_lists_the_labels(dataset):
    error = _error(dataset, ReaderOptions(label=3))
    assert error.path == str(dataset / "dataset.json")
    assert "lesion label 3 is not one of the labels (lesion=1)" in error.fault


def test_label_two_is_materialised_as_a_binary_mask(tmp_path):
    root = write_dataset(tmp_path / "D", {"labels": {"background": 0, "core": 1, "penumbra": 2}})
    cohort = nnunet_raw.read(root, ReaderOptions(label=2))
    assert cohort.materialise is not None
    materialise = pickle.loads(pickle.dumps(cohort.materialise))    # worker processes get a copy
    subject = cohort.subjects[1]
    done = materialise(subject, tmp_path / "out")
    out = tmp_path / "out" / "case_002_mask.nii.gz"
    assert done.mask == out and done.channels == subject.channels and done.subject == "case_002"
    img = nib.load(out)
    mask = np.asanyarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, AFFINE)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert np.array_equal(mask, (label_map() == 2).astype(np.uint8))
    # label 1 of a multi-label map is materialised too (its file holds 2s)
    assert nnunet_raw.read(root, ReaderOptions(label=1)).materialise is not None


def test_num_training_must_match(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    error = _error(dataset)
    assert error.path == str(dataset / "dataset.json") and "numTraining is 5 but" in error.fault
    assert "hold 3 cases" in error.fault


def test_images_ts_is_ignored(dataset, caplog):
    _save(dataset / "imagesTs" / "case_100_0000.nii.gz", np.ones(SHAPE, np.float32))
    _save(dataset / "imagesTs" / "case_100_0001.nii.gz", np.ones(SHAPE, np.float32))
    with caplog.at_level(logging.INFO, logger="strokeseg.data.readers.nnunet_raw"):
        cohort = nnunet_raw.read(dataset, ReaderOptions())
    assert [s.subject for s in cohort.subjects] == ["case_001", "case_002", "case_003"]
    assert any(note.startswith("imagesTs/ ignored (2 files)") for note in cohort.notes)
    assert "imagesTs/ ignored" in caplog.text


def test_dataset_json_faults(tmp_path):
    root = tmp_path / "D"
    (root / "imagesTr").mkdir(parents=True)
    assert not nnunet_raw.matches(root)
    assert "dataset.json not found" in _error(root).fault
    (root / "dataset.json").write_text("{not json")
    assert nnunet_raw.matches(root)
    assert "not valid JSON (line 1" in _error(root).fault
    write_dataset(root, {"file_ending": ".mha"})
    error = _error(root)
    assert error.path == str(root / "dataset.json") and "(supported: .nii.gz, .nii)" in error.fault


def test_no_cases(tmp_path):
    root = write_dataset(tmp_path / "D", cases=())
    error = _error(root)
    assert error.path == str(root / "imagesTr") and "no training cases" in error.fault


def test_nii_ending(tmp_path):
    root = tmp_path / "D"
    write_dataset(root, {"file_ending": ".nii"}, cases=())
    _save(root / "imagesTr" / "a_0000.nii", np.ones(SHAPE, np.float32))
    _save(root / "imagesTr" / "a_0001.nii", np.ones(SHAPE, np.float32))
    _save(root / "labelsTr" / "a.nii", (label_map() == 1).astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({**json.loads((root / "dataset.json").read_text()),
                                                   "numTraining": 1}))
    [subject] = nnunet_raw.read(root, ReaderOptions()).subjects
    assert subject.subject == "a" and subject.mask == root / "labelsTr" / "a.nii"


@pytest.mark.parametrize("which", ["imagesTr/case_002_0001.nii.gz", "labelsTr/case_002.nii.gz", "dataset.json"])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_file_that_is_not_a_regular_file_is_an_error_naming_it(dataset, which, kind):
    """Not 'not found' (it is there), never skipped and never opened (a FIFO would block)."""
    path = dataset / which
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    error = _error(dataset)
    assert error.path == str(path)
    assert error.fault == f"not a regular file ({'a FIFO' if kind == 'fifo' else 'a folder'})"


def test_test_images_are_only_counted_whatever_they_are(dataset):
    (dataset / "imagesTs").mkdir()
    os.mkfifo(dataset / "imagesTs" / "case_009_0000.nii.gz")
    cohort = nnunet_raw.read(dataset, ReaderOptions())
    assert len(cohort.subjects) == 3 and "imagesTs/ ignored (1 files)" in cohort.notes[0]

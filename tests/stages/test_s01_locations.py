"""Stage 01's lesion locations: written for cohorts in MNI space (the synthetic cohort), consistent with
the lesion statistics, checked against the territories the generator placed; skipped with one logged
line for native-space cohorts and when switched off."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg.cli import main
from strokeseg.contracts import (
    ATLAS_CACHE_DIR,
    DATASET,
    LESION_FREQUENCY_NII,
    LESION_LOAD_CSV,
    LESION_LOCATIONS_CSV,
    SUBJECT_LOCATIONS_CSV,
    SUBJECTS_3D_CSV,
)
from strokeseg.data import lesion_locations, lesions

N_SUBJECTS = 10
LOCATION_FILES = (LESION_LOCATIONS_CSV, SUBJECT_LOCATIONS_CSV, LESION_LOAD_CSV, LESION_FREQUENCY_NII,
                  "lesion_locations.png", "lesion_frequency.png")


SYNTHETIC = ["--quiet", "--profile", "demo", "--n-subjects", str(N_SUBJECTS), "--downsample", "4", "--workers", "1"]


@pytest.fixture(scope="module")
def synthetic_stage(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("locations")
    assert main(["dataset", "--workdir", str(workdir), *SYNTHETIC]) == 0
    return workdir / DATASET


def test_every_lesion_of_the_statistics_is_located_once(synthetic_stage):
    stats = pd.read_csv(synthetic_stage / SUBJECTS_3D_CSV)
    located = pd.read_csv(synthetic_stage / LESION_LOCATIONS_CSV)
    assert list(located.groupby("subject_name").size().reindex(stats["subject_name"], fill_value=0)) \
        == list(stats["number_of_lesion"])
    for name, own in located.groupby("subject_name"):
        row = stats[stats["subject_name"] == name].iloc[0]
        assert list(own["voxels"])[:10] == [row[f"lesion_size_{k}"] for k in range(1, min(len(own), 10) + 1)]
        parts = own[["cortical_voxels", "subcortical_voxels", "infratentorial_voxels", "outside_voxels"]]
        assert (parts.sum(axis=1) == own["voxels"]).all()
    # the statistics, taken from the located lesions when the plan grid is the subject's, are the masks'
    cohort = pd.read_csv(synthetic_stage / "cohort.csv").set_index("subject_name")
    for name in stats["subject_name"][:3]:
        mask = np.asarray(nib.load(cohort.loc[name, "mask"]).dataobj)
        expected = lesions.subject_statistics(mask)
        assert stats.set_index("subject_name").loc[name, list(expected)].to_dict() == expected
    assert set(located["location_class"]) <= set(lesion_locations.LOCATION_CLASSES)
    assert set(located["hemisphere"]) <= set(lesion_locations.HEMISPHERES)


def test_the_load_table_and_the_subject_table_add_up(synthetic_stage):
    located = pd.read_csv(synthetic_stage / LESION_LOCATIONS_CSV)
    load = pd.read_csv(synthetic_stage / LESION_LOAD_CSV)
    subjects = pd.read_csv(synthetic_stage / SUBJECT_LOCATIONS_CSV)
    assert len(subjects) == N_SUBJECTS
    inside = located.eval("voxels - outside_voxels").groupby(located["subject_name"]).sum()
    assert load.groupby("subject_name")["voxels"].sum().to_dict() == inside.to_dict()
    assert subjects.set_index("subject_name")["voxels"].to_dict() == located.groupby("subject_name")["voxels"].sum()\
        .to_dict()
    assert np.allclose(load["volume_ml"], load["voxels"] * 4 ** 3 / 1000)


def test_the_atlas_mostly_agrees_with_the_territories_the_generator_placed(synthetic_stage):
    located = pd.read_csv(synthetic_stage / LESION_LOCATIONS_CSV)
    assert set(located["placed_territory"]) <= {"MCA", "deep", "PCA", "ACA", "cerebellum", "brainstem", "other"}
    checked = located["territory_agrees"].dropna()
    assert len(checked) >= 0.9 * len(located)
    assert checked.astype(bool).mean() >= 0.8
    record = json.loads((synthetic_stage / "manifest.json").read_text())["lesion_locations"]
    assert record["territory_agreement"] == {"checked": len(checked), "agree": int(checked.astype(bool).sum())}


def test_the_frequency_map_is_the_share_of_subjects_on_the_cohort_grid(synthetic_stage):
    image = nib.load(synthetic_stage / LESION_FREQUENCY_NII)
    mask = nib.load(next((synthetic_stage / "synthetic_cohort").rglob("*_mask.nii.gz")))
    assert image.shape == mask.shape and np.allclose(image.affine, mask.affine)
    frequency = np.asarray(image.dataobj)
    counts = frequency * N_SUBJECTS
    assert frequency.min() >= 0 and frequency.max() <= 1 and np.allclose(counts, np.rint(counts), atol=1e-4)
    total = pd.read_csv(synthetic_stage / LESION_LOCATIONS_CSV)["voxels"].sum()
    assert round(float(counts.sum())) == total
    for figure in ("lesion_locations.png", "lesion_frequency.png"):
        assert (synthetic_stage / figure).stat().st_size > 10_000


def test_the_atlas_is_cached_in_the_workdir_and_reused(synthetic_stage):
    cache = synthetic_stage.parent / ATLAS_CACHE_DIR
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(before) == 2     # one grid: its labels and names
    assert main(["dataset", "--workdir", str(synthetic_stage.parent), *SYNTHETIC]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before


def test_switched_off_no_location_output_and_the_stage_runs(synthetic_stage, tmp_path, capsys):
    workdir = tmp_path / "off"
    # without --quiet: the stage logs at INFO on stderr
    assert main(["dataset", "--workdir", str(workdir), "--atlas-dir", str(synthetic_stage / "synthetic_cohort"),
                 "--workers", "1", "--set", "dataset.lesion_locations=false"]) == 0
    assert not any((workdir / DATASET / name).exists() for name in LOCATION_FILES)
    assert "lesion locations off" in capsys.readouterr().err


def test_a_native_space_cohort_skips_the_locations_with_one_logged_line(tmp_path, capsys):
    from tests.data.readers.test_nnunet_raw import write_dataset

    source = write_dataset(tmp_path / "Dataset042_Stroke", cases=("case_001", "case_002", "case_003", "case_004"))
    assert main(["dataset", "--workdir", str(tmp_path / "work"), "--dataset", "nnunet", "--data-dir", str(source),
                 "--workers", "1", "--set", "dataset.binarize_masks=true"]) == 0
    assert not any((tmp_path / "work" / DATASET / name).exists() for name in LOCATION_FILES)
    skipped = [line for line in capsys.readouterr().err.splitlines() if "lesion locations skipped" in line]
    assert len(skipped) == 1 and "not in MNI space" in skipped[0]

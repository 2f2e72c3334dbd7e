"""The synthetic ISLES'22-like cohort: layout, sessions, per-session grids, contrast, world geometry, determinism."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from strokeseg.data.synthetic import cohort_parameters, is_synthetic
from strokeseg.data.synthetic_multimodal import (
    MULTIMODAL_GENERATOR_VERSION,
    acute_lesion_plan,
    generate_multimodal_cohort,
    is_multimodal,
    orientation,
    session_names,
    session_paths,
    subject_name,
    synthesize_multimodal_subject,
)

SEED, D, N, N_SHORT = 11, 3, 8, 3     # index 7 has two sessions; 2 and 5 are RAS


def _sessions(n: int) -> list[tuple[int, str]]:
    return [(i, ses) for i in range(n) for ses in session_names(i)]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The reference cohort (one worker) and a shorter one with the same seed built by two workers."""
    root = tmp_path_factory.mktemp("multimodal")
    ref, short = root / "ref", root / "short"
    generate_multimodal_cohort(ref, N, SEED, downsample=D, workers=1)
    short.mkdir()   # an existing empty folder is accepted
    generate_multimodal_cohort(short, N_SHORT, SEED, downsample=D, workers=2)
    return {"ref": ref, "short": short}


@pytest.fixture(scope="module")
def volumes(cohorts):
    """Every session of the reference cohort: images (headers) and arrays of DWI, ADC and mask."""
    out = []
    for i, ses in _sessions(N):
        imgs = [nib.load(str(p)) for p in session_paths(cohorts["ref"], i, ses)]
        arrays = [np.asanyarray(img.dataobj) for img in imgs]
        out.append({"i": i, "ses": ses, "imgs": imgs, "dwi": arrays[0], "adc": arrays[1], "mask": arrays[2]})
    return out


# Layout and description ----------------------------------------------------------------------
def test_bids_names_are_isles22_full_release(cohorts):
    ref = cohorts["ref"]
    files = sorted(str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file())
    expected = ["dataset_description.json"]
    for i, ses in _sessions(N):
        sub = f"sub-strokecase{i + 1:04d}"
        expected += [f"rawdata/{sub}/{ses}/dwi/{sub}_{ses}_dwi.nii.gz",
                     f"rawdata/{sub}/{ses}/dwi/{sub}_{ses}_adc.nii.gz",
                     f"derivatives/{sub}/{ses}/{sub}_{ses}_msk.nii.gz"]
    assert files == sorted(expected)   # and no temporary files left behind
    assert subject_name(0) == "sub-strokecase0001" and subject_name(122) == "sub-strokecase0123"


def test_every_eighth_patient_has_two_sessions(cohorts):
    assert session_names(7) == session_names(15) == ("ses-0001", "ses-0002")
    assert all(session_names(i) == ("ses-0001",) for i in range(7))
    sessions = sorted(p.name for p in (cohorts["ref"] / "rawdata" / "sub-strokecase0008").iterdir())
    assert sessions == ["ses-0001", "ses-0002"]


def test_description_marks_the_cohort_synthetic_and_multimodal(cohorts, tmp_path):
    ref = cohorts["ref"]
    assert is_synthetic(ref) and is_multimodal(ref)
    assert cohort_parameters(ref) == {"GeneratorVersion": MULTIMODAL_GENERATOR_VERSION, "n_subjects": N,
                                      "seed": SEED, "downsample": D}
    description = json.loads((ref / "dataset_description.json").read_text())
    assert description["Flavour"] == "multimodal" and description["Synthetic"] is True
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Synthetic": True}))
    assert is_synthetic(tmp_path) and not is_multimodal(tmp_path)   # the ATLAS-like flavour has no "Flavour"


def test_bad_arguments_are_refused(tmp_path):
    for kwargs in ({"n_subjects": 0, "seed": 1}, {"n_subjects": 1, "seed": -1},
                   {"n_subjects": 1, "seed": 1, "downsample": 0}, {"n_subjects": 1, "seed": 1, "downsample": 1.5}):
        with pytest.raises(ValueError):
            generate_multimodal_cohort(tmp_path / "x", **kwargs)


# Grids ---------------------------------------------------------------------------------------------
def test_each_session_has_its_own_grid(volumes):
    grids = set()
    for v in volumes:
        zooms = np.array(v["imgs"][0].header.get_zooms()[:3])
        assert D * 1.8 - 1e-4 <= zooms[0] == zooms[1] <= D * 2.2 + 1e-4
        assert D * 2.0 - 1e-4 <= zooms[2] <= D * 2.5 + 1e-4
        assert all(20 <= n <= 60 for n in v["dwi"].shape), v["dwi"].shape
        grids.add((v["dwi"].shape, tuple(np.round(zooms, 3))))
    assert len(grids) == len(volumes)


def test_orientations_are_las_with_every_third_ras(volumes):
    codes = {(v["i"], v["ses"]): "".join(nib.aff2axcodes(v["imgs"][0].affine)) for v in volumes}
    assert all(code == orientation(i) for (i, _), code in codes.items())
    assert set(codes.values()) == {"LAS", "RAS"}
    assert orientation(2) == orientation(5) == "RAS" and orientation(0) == orientation(7) == "LAS"


def test_channels_and_mask_share_affine_and_header(volumes):
    for v in volumes:
        dwi, adc, msk = (img.header for img in v["imgs"])
        assert (dwi.get_data_dtype(), adc.get_data_dtype(), msk.get_data_dtype()) == (
            np.dtype(np.float32), np.dtype(np.float32), np.dtype(np.uint8))
        for other in (adc, msk):
            np.testing.assert_array_equal(other.get_best_affine(), dwi.get_best_affine())
            for key in ("dim", "pixdim", "qform_code", "sform_code", "xyzt_units", "descrip",
                        "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d"):
                np.testing.assert_array_equal(other[key], dwi[key], err_msg=key)


# Intensities and masks ------------------------------------------------------------------------
def test_mask_is_binary_and_non_empty(volumes):
    for v in volumes:
        assert set(np.unique(v["mask"]).tolist()) == {0, 1}


def test_lesion_is_bright_on_dwi_and_dark_on_adc(volumes):
    for v in volumes:
        lesion = v["mask"] > 0
        # Parenchyma: ADC in the tissue range, away from the lesion (its partial-volume border).
        tissue = (v["adc"] > 500) & (v["adc"] < 1500) & ~ndi.binary_dilation(lesion, iterations=2)
        assert v["dwi"][lesion].mean() > 1.2 * v["dwi"][tissue].mean(), (v["i"], v["ses"])
        assert v["adc"][lesion].mean() < v["adc"][tissue].mean(), (v["i"], v["ses"])
        assert 700 < np.median(v["adc"][tissue]) < 1100
        assert v["adc"].max() > 2000            # CSF


def test_intensities_are_non_negative_with_noise_outside_the_head(volumes):
    for v in volumes:
        for name in ("dwi", "adc"):
            x = v[name]
            assert np.all(np.isfinite(x)) and x.min() >= 0
            shell = np.ones(x.shape, bool)
            shell[2:-2, 2:-2, 2:-2] = False      # the grid holds the head with margins: background
            assert np.count_nonzero(x[shell]) > 0.99 * shell.sum()
            assert x[shell].mean() < 0.15 * np.percentile(x, 90), name


# World geometry -------------------------------------------------------------------------------
def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.fixture(scope="module")
def template_brain():
    """The MNI152 2009 template's brain (its support), widened by 8 mm for the deformation."""
    from nilearn import datasets
    img = datasets.load_mni152_template(resolution=1)
    brain = ndi.binary_dilation(np.asanyarray(img.dataobj) > 0, iterations=8)
    return brain, np.array(img.affine, dtype=float)


def test_lesions_lie_in_the_brain_in_world_coordinates(volumes, template_brain):
    brain, brain_affine = template_brain
    for v in volumes:
        affine = v["imgs"][2].affine
        assert np.linalg.norm(_world_centroid(v["mask"], affine)) < 110   # near the MNI origin
        labels, n = ndi.label(v["mask"])
        for k in range(1, n + 1):   # each lesion's centre, looked up in the template
            world = _world_centroid(labels == k, affine)
            ijk = np.rint(np.linalg.solve(brain_affine, np.append(world, 1.0))[:3]).astype(int)
            assert brain[tuple(ijk)], (v["i"], v["ses"], k, world)


def _world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.argwhere(mask > 0) @ affine[:3, :3].T + affine[:3, 3]


def test_resampled_lesions_stay_where_they_were_drawn():
    """Every written lesion voxel lies within one voxel of a drawn lesion voxel, in world mm.

    A wrong affine (a flip, a swapped axis, an offset) would put the written voxels elsewhere: a
    left-right flip moves a lateral lesion across the midline.
    """
    lateral = 0
    for i in (0, 2, 7):   # LAS, RAS, and a two-session LAS patient
        for s in synthesize_multimodal_subject(SEED, i, D):
            drawn = _world_points(s.work_mask, s.work_affine)
            written = _world_points(s.mask, s.affine)
            spacing = np.linalg.norm(s.affine[:3, :3], axis=0).max()
            distance, _ = cKDTree(drawn).query(written)
            assert distance.max() < spacing, (i, s.session, distance.max())
            lateral += abs(drawn[:, 0].mean()) > 2 * spacing
    assert lateral >= 2   # the check could see a left-right flip


# Determinism ----------------------------------------------------------------------------------
def test_same_seed_same_bytes_whatever_the_cohort_size_and_workers(cohorts):
    for i, ses in _sessions(N_SHORT):
        for a, b in zip(session_paths(cohorts["ref"], i, ses), session_paths(cohorts["short"], i, ses)):
            assert a.read_bytes() == b.read_bytes(), a.name


# Lesion sizes ---------------------------------------------------------------------------------
def test_acute_lesion_sizes_are_isles_like():
    rng = np.random.default_rng(0)
    plans = [acute_lesion_plan(rng, 1) for _ in range(2000)]
    totals = np.array([p.total_1mm for p in plans]) / 1000.0     # mL
    counts = np.array([len(p.sizes) for p in plans])
    assert 2.5 < np.median(totals) < 3.6
    assert totals.min() >= 0.2 and totals.max() <= 100
    assert set(counts.tolist()) == {1, 2, 3, 4}
    assert all(sum(p.sizes_1mm) == p.total_1mm for p in plans)
    small = acute_lesion_plan(np.random.default_rng(1), 3)
    assert min(small.sizes) >= 16

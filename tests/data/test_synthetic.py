"""The synthetic ATLAS-like cohort: layout, geometry, determinism, lesions, site profiles and statistics."""
from __future__ import annotations

import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from strokeseg.config import VOLUME_BIN_EDGES
from strokeseg.data.scanner_sites import N_SITES, NOISY, NOISY_SHELL, SKULL_STRIPPED, site_profile
from strokeseg.data.synthetic import (
    GENERATOR_VERSION,
    MIN_LESION_VOXELS,
    SYNTHETIC_COHORT_NAME,
    cohort_parameters,
    generate_cohort,
    is_synthetic,
    lesion_plan,
    placed_lesions,
    sample_lesion_targets,
    subject_name,
    subject_paths,
    synthesize_subject,
    template_grid,
    territories_path,
)
from strokeseg.errors import InputError
from strokeseg.protocol.bins import assign_bins

SEED, OTHER_SEED, D = 7, 8, 4
N = 3
ATLAS_BINS = np.array([319, 154, 64, 49, 44, 25]) / 655
ATLAS_COUNTS = {1: 307, 2: 136, 3: 81, 4: 53, 5: 20, 6: 15, 7: 11, 8: 13, 9: 7}
STRUCT26 = np.ones((3, 3, 3), dtype=bool)
WM_LEVEL = 0.87                 # template white-matter intensity

# sha256 of the C-ordered uint8 masks that generator version 1 (before the site profiles) made for
# (seed, index, downsample): the scanner profiles must leave every mask bit-identical.
MASK_SHA256 = {
    (7, 0, 4): "a75666173519396443428d027e771b4bf335dc8141fe6655abbd23d7cc724d54",
    (7, 1, 4): "3fc6550fd7f37a5e1cc98d41f6299a3b7d4e8d4f3f027338c01e44964e893320",
    (7, 2, 4): "b77304800100ac0041b93a4344f6ec09c0742dea036764de27dda2ef9ac710d2",
    (8, 0, 4): "ec356a8a0b1f3dd3d42dd6e07ae82b18ab01b0c83a22203a72546552880dcb84",
    (7, 0, 1): "83494ff169dfcdeee7255f29008786b7df4b71a8f56ce9335e585a10e338456e",
}


def _sha256(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes()).hexdigest()


def _first_site(seed: int, kind: str) -> int:
    return next(s for s in range(1, N_SITES + 1) if site_profile(seed, s).kind == kind)


def _wm_level(profile) -> float:
    """White matter of a subject at this site, before its jitter (gamma +-3 %, scale +-4 %) and bias."""
    return WM_LEVEL ** profile.gamma * profile.scale


def _load(path):
    img = nib.load(str(path))
    return img, np.asanyarray(img.dataobj)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """Three small downsampled cohorts: the reference, a shorter one built with 2 workers, another seed."""
    root = tmp_path_factory.mktemp("synthetic")
    ref, short, other = root / "ref", root / "short", root / "other"
    generate_cohort(ref, N, SEED, downsample=D, workers=1, progress=False)
    short.mkdir()   # an existing empty folder is accepted
    generate_cohort(short, 2, SEED, downsample=D, workers=2, progress=False)
    generate_cohort(other, 1, OTHER_SEED, downsample=D, progress=False)
    return {"ref": ref, "short": short, "other": other}


@pytest.fixture(scope="module")
def subjects(cohorts):
    out = []
    for i in range(N):
        t1_path, mask_path = subject_paths(cohorts["ref"], i)
        t1_img, t1 = _load(t1_path)
        mask_img, mask = _load(mask_path)
        out.append({"i": i, "t1_img": t1_img, "t1": t1, "mask_img": mask_img, "mask": mask,
                    "plan": lesion_plan(SEED, i, D)})
    return out


@pytest.fixture(scope="module")
def fine_wm():
    from nilearn import datasets
    return datasets.load_mni152_wm_template(resolution=1).get_fdata()


# Layout and description ----------------------------------------------------------------------
def test_bids_names_and_paths_are_atlas_v2(cohorts):
    ref = cohorts["ref"]
    files = sorted(str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file())
    expected = ["dataset_description.json"]
    for site, name in [("R001", "sub-r001s001"), ("R002", "sub-r002s001"), ("R003", "sub-r003s001")]:
        anat = f"Training/{site}/{name}/ses-1/anat/{name}_ses-1_space-MNI152NLin2009aSym"
        expected += [f"{anat}_T1w.nii.gz", f"{anat}_label-L_desc-T1lesion_mask.nii.gz",
                     f"{anat}_label-L_desc-T1lesion_mask.json"]
    assert files == sorted(expected)   # and no temporary files left behind


def test_subject_names_spread_over_sites_unique_and_stable():
    names = [subject_name(i) for i in range(655)]
    assert len(set(names)) == 655
    assert names[0] == "sub-r001s001" and names[4] == "sub-r005s001" and names[30] == "sub-r001s002"
    sites = {re.search(r"r(\w{3})", n).group(0).upper() for n in names}   # upstream's site rule
    assert len(sites) == 30
    for i in (0, 11, 654):
        t1, mask = subject_paths("root", i)
        assert t1.parent == mask.parent and t1.parts[2] == re.search(r"r(\w{3})", names[i]).group(0).upper()


def test_description_marks_the_cohort_synthetic(cohorts):
    ref = cohorts["ref"]
    desc = json.loads((ref / "dataset_description.json").read_text())
    assert desc["Name"] == SYNTHETIC_COHORT_NAME and desc["Synthetic"] is True
    assert "synthetic" in desc["Description"].lower() and "nilearn" in desc["Description"]
    assert "MNI152" in desc["Description"]
    assert is_synthetic(ref)
    assert cohort_parameters(ref) == {"GeneratorVersion": GENERATOR_VERSION, "n_subjects": N,
                                      "seed": SEED, "downsample": D}
    assert GENERATOR_VERSION == 3       # 2: site scanner profiles; 3: territory sidecars


def test_description_records_the_site_profiles(cohorts):
    for key, seed, n in (("ref", SEED, N), ("short", SEED, 2), ("other", OTHER_SEED, 1)):
        desc = json.loads((cohorts[key] / "dataset_description.json").read_text())
        profiles = desc["SiteProfiles"]
        assert list(profiles) == [f"R{s:03d}" for s in range(1, n + 1)]      # the sites holding subjects
        for s in range(1, n + 1):
            assert profiles[f"R{s:03d}"] == site_profile(seed, s).to_dict()
    ref = json.loads((cohorts["ref"] / "dataset_description.json").read_text())["SiteProfiles"]
    other = json.loads((cohorts["other"] / "dataset_description.json").read_text())["SiteProfiles"]
    assert ref["R001"] != other["R001"]          # another seed: other scanners


def test_is_synthetic_false_without_or_with_a_real_description(tmp_path):
    assert not is_synthetic(tmp_path) and cohort_parameters(tmp_path) is None
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "ATLAS", "BIDSVersion": "1.6.0"}))
    assert not is_synthetic(tmp_path) and cohort_parameters(tmp_path) is None
    (tmp_path / "dataset_description.json").write_text("{not json")
    with pytest.raises(InputError, match="dataset_description.json"):
        is_synthetic(tmp_path)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_subjects"):
        generate_cohort(tmp_path / "x", 0, SEED, progress=False)
    with pytest.raises(ValueError, match="downsample"):
        generate_cohort(tmp_path / "x", 1, SEED, downsample=0, progress=False)


# Geometry --------------------------------------------------------------------------------------
def test_downsampled_grid_keeps_physical_space(subjects):
    from nilearn import datasets
    template_affine = datasets.load_mni152_template(resolution=1).affine
    for s in subjects:
        for img, dtype in ((s["t1_img"], np.int16), (s["mask_img"], np.uint8)):
            assert img.shape == (50, 59, 48)                      # ceil((197, 233, 189) / 4)
            np.testing.assert_allclose(img.affine, template_affine @ np.diag([D, D, D, 1]))
            assert img.header.get_data_dtype() == dtype
            assert int(img.header["qform_code"]) in (1, 4) and int(img.header["sform_code"]) in (1, 4)
            np.testing.assert_allclose(img.header.get_qform(), img.affine)
            assert img.header.get_xyzt_units()[0] == "mm"
    assert template_grid(D)[0] == (50, 59, 48)


def test_full_resolution_subject_is_on_atlas_grid(tmp_path):
    from nilearn import datasets
    template = datasets.load_mni152_template(resolution=1)
    generate_cohort(tmp_path, 1, SEED, downsample=1, progress=False)
    t1_img, t1 = _load(subject_paths(tmp_path, 0)[0])
    mask_img, mask = _load(subject_paths(tmp_path, 0)[1])
    for img in (t1_img, mask_img):
        assert img.shape == (197, 233, 189)
        np.testing.assert_array_equal(img.affine, template.affine)
        np.testing.assert_array_equal(img.affine[:3, 3], [-98, -134, -72])
    assert t1.dtype == np.int16 and mask.dtype == np.uint8
    labels, n = ndi.label(mask, STRUCT26)
    plan = lesion_plan(SEED, 0, 1)
    assert n == len(plan.sizes) and int(mask.sum()) == sum(plan.sizes) == plan.total_1mm
    assert _sha256(mask) == MASK_SHA256[(SEED, 0, 1)]                   # the masks of generator version 1
    profile = site_profile(SEED, 1)
    far = ndi.distance_transform_edt(template.get_fdata() == 0) > 16      # mm from the template brain
    assert (t1 >= 0).all() and (not t1[far].any()) is profile.skull_stripped
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata() > 0.95
    assert 0.8 <= np.median(t1[wm & (mask == 0)]) / _wm_level(profile) <= 1.2


# Determinism -----------------------------------------------------------------------------------
def test_same_seed_same_subjects_whatever_the_cohort_size_and_workers(cohorts):
    for i in range(2):
        for k in (0, 1):
            img_a, a = _load(subject_paths(cohorts["ref"], i)[k])
            img_b, b = _load(subject_paths(cohorts["short"], i)[k])
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(img_a.affine, img_b.affine)


def test_other_seed_other_subjects(cohorts):
    _, a = _load(subject_paths(cohorts["ref"], 0)[0])
    _, b = _load(subject_paths(cohorts["other"], 0)[0])
    assert a.shape == b.shape and not np.array_equal(a, b)


# Lesions and intensities -----------------------------------------------------------------------
def test_mask_has_the_planned_lesions_exactly(subjects):
    for s in subjects:
        mask, plan = s["mask"], s["plan"]
        assert set(np.unique(mask)) <= {0, 1}
        labels, n = ndi.label(mask, STRUCT26)
        assert n == len(plan.sizes)
        sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
        assert sizes == sorted(plan.sizes, reverse=True)
        assert min(plan.sizes) >= 4


def test_each_lesion_s_territory_is_recorded_beside_its_mask_with_a_voxel_inside_it(cohorts, subjects):
    for s in subjects:
        _, mask_path = subject_paths(cohorts["ref"], s["i"])
        placed = placed_lesions(mask_path)
        assert territories_path(mask_path).name.endswith("_desc-T1lesion_mask.json")
        labels, n = ndi.label(s["mask"], STRUCT26)
        assert len(placed) == n
        # every component is named by exactly one placed lesion, in a known territory and a side that fits
        assert sorted(int(labels[p.voxel]) for p in placed) == list(range(1, n + 1))
        for p in placed:
            assert p.territory in {"MCA", "deep", "PCA", "ACA", "cerebellum", "brainstem", "other"}
            assert p.side in ({"", "left", "right"} if p.territory in {"MCA", "deep", "PCA", "ACA", "cerebellum"}
                              else {""})
            x_mm = (s["mask_img"].affine @ np.append(p.voxel, 1.0))[0]
            assert p.side != "left" or x_mm < 0
            assert p.side != "right" or x_mm > 0
    assert placed_lesions(cohorts["ref"] / "no_such_mask.nii.gz") is None


def test_masks_are_those_of_generator_version_1(cohorts, subjects):
    """The site profiles draw from their own streams: anatomy and lesions, hence masks, are unchanged."""
    for s in subjects:
        assert _sha256(s["mask"]) == MASK_SHA256[(SEED, s["i"], D)]
    _, other = _load(subject_paths(cohorts["other"], 0)[1])
    assert _sha256(other) == MASK_SHA256[(OTHER_SEED, 0, D)]


def test_lesions_lie_in_the_brain_and_the_background_follows_the_site(subjects):
    from nilearn import datasets
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata()[::D, ::D, ::D] > 0.5
    far = ndi.distance_transform_edt(~brain, sampling=D) > 16                 # mm
    kinds = set()
    for s in subjects:
        t1, mask = s["t1"], s["mask"].astype(bool)
        profile = site_profile(SEED, s["i"] % N_SITES + 1)
        kinds.add(profile.kind)
        assert (t1[mask] > 0).all() and (t1 >= 0).all()
        if profile.skull_stripped:
            assert not t1[far].any()                                          # exactly 0 outside the head
            assert 0.8 < (t1 > 0).sum() / brain.sum() < 1.25
        else:
            assert (t1[far] == 0).mean() < 0.01                               # Rayleigh noise everywhere
            assert np.median(t1[far]) > 0.5 * profile.noise * profile.scale   # median 1.18 sigma
    assert {SKULL_STRIPPED, NOISY} <= kinds       # seed 7's sites R001-R003: both looks are tested here


def test_lesions_are_darker_than_white_matter(subjects, fine_wm):
    wm = fine_wm[::D, ::D, ::D] > 0.9
    for s in subjects:
        t1, mask = s["t1"].astype(float), s["mask"].astype(bool)
        near = ndi.binary_dilation(mask, iterations=2)
        wm_level = np.median(t1[wm & ~near])
        assert 0.75 <= wm_level / _wm_level(site_profile(SEED, s["i"] % N_SITES + 1)) <= 1.25
        assert t1[mask].mean() < 0.8 * wm_level


@pytest.fixture(scope="module")
def looks():
    """One downsampled subject of each kind of site (synthesized in memory, not written)."""
    return {kind: synthesize_subject(SEED, _first_site(SEED, kind) - 1, D)
            for kind in (SKULL_STRIPPED, NOISY, NOISY_SHELL)}


def test_subjects_carry_their_site_profile(looks):
    for kind, subject in looks.items():
        assert subject.profile.kind == kind
        assert subject.profile == site_profile(SEED, int(subject.name[5:8]))
        assert subject.brain.dtype == bool and subject.brain.shape == subject.t1.shape
        assert not (subject.mask.astype(bool) & ~subject.brain).any()          # lesions lie in the brain
        assert _sha256(subject.mask) == _sha256(synthesize_subject(SEED, int(subject.name[5:8]) - 1, D).mask)


def test_background_is_zero_exactly_at_skull_stripped_sites(looks):
    for kind, subject in looks.items():
        outside = subject.t1[~subject.brain & ~subject.shell]
        if kind == SKULL_STRIPPED:
            assert not outside.any() and (subject.t1[subject.brain] >= 1).all()   # T1 > 0 is the head
        else:
            assert (outside == 0).mean() < 0.01 and (subject.t1 >= 0).all()


def test_the_shell_lies_outside_the_brain_and_only_where_the_profile_says(looks):
    for kind, subject in looks.items():
        profile, t1, brain, shell = subject.profile, subject.t1.astype(float), subject.brain, subject.shell
        assert shell.dtype == bool and shell.shape == t1.shape
        wm = _wm_level(profile)
        bright_outside = (t1 > 0.5 * wm) & ~brain          # beyond any noise of these sites (>= 6 sigma)
        if kind != NOISY_SHELL:
            assert not shell.any() and not bright_outside.any()
            continue
        assert shell.any() and not (shell & brain).any() and not (shell & (subject.mask > 0)).any()
        assert not (bright_outside & ~shell).any()         # bright voxels outside the brain are the shell
        assert np.percentile(t1[shell], 90) > 0.8 * profile.shell_contrast * wm
        # a few mm outside the brain: its voxels' distance from the brain (the band, blurred by 4 mm voxels)
        distance = ndi.distance_transform_edt(~brain, sampling=D)[shell]
        assert distance.min() >= D - 1e-6                   # no shell voxel in the brain
        assert profile.shell_gap_mm <= np.median(distance) <= profile.shell_gap_mm + profile.shell_thickness_mm + 2 * D


def test_the_shell_never_overlaps_the_brain_on_coarse_grids():
    """At 8 mm a voxel is wider than the gap: the brain's own voxels must still be kept out of the shell."""
    subject = synthesize_subject(SEED, _first_site(SEED, NOISY_SHELL) - 1, 8)
    assert subject.shell.any() and not (subject.shell & subject.brain).any()


# Statistics ------------------------------------------------------------------------------------
def test_targets_reproduce_atlas_statistics():
    volume, count = sample_lesion_targets(np.random.default_rng(0), 4000)
    assert volume.dtype.kind == "i" and count.dtype.kind == "i"
    bins = np.bincount(assign_bins(volume, VOLUME_BIN_EDGES), minlength=6) / volume.size
    np.testing.assert_allclose(bins, ATLAS_BINS, atol=0.005)
    assert abs(np.median(volume) / 5290 - 1) < 0.2
    assert abs(volume.mean() / 33226 - 1) < 0.2
    assert volume.min() >= 13 and volume.max() <= 500_000
    freq = np.bincount(count, minlength=34) / count.size
    for k, n in ATLAS_COUNTS.items():
        assert abs(freq[k] - n / 655) < 0.02, k
    assert abs(freq[11:].sum() - 12 / 655) < 0.01 and count.max() <= 33
    assert (count * MIN_LESION_VOXELS <= np.maximum(volume, MIN_LESION_VOXELS)).all()
    assert np.corrcoef(np.log(volume), count)[0, 1] > 0.1    # more lesions in larger totals


def test_small_cohorts_cover_every_volume_bin():
    for seed in range(5):
        totals = [lesion_plan(seed, i).total_1mm for i in range(40)]
        assert set(assign_bins(totals, VOLUME_BIN_EDGES)) == set(range(6))


def test_lesion_plan_splits_the_total_with_a_dominant_lesion():
    dominant = []
    for i in range(200):
        plan = lesion_plan(SEED, i)
        assert sum(plan.sizes_1mm) == plan.total_1mm and min(plan.sizes_1mm) >= min(MIN_LESION_VOXELS, plan.total_1mm)
        assert list(plan.sizes_1mm) == sorted(plan.sizes_1mm, reverse=True)
        if len(plan.sizes_1mm) > 1:
            dominant.append(plan.sizes_1mm[0] / plan.total_1mm)
        small = lesion_plan(SEED, i, 4)
        assert small.sizes == tuple(max(4, round(v / 64)) for v in plan.sizes_1mm)
    assert np.median(dominant) > 0.5

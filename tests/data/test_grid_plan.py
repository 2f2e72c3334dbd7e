from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.data.grid_plan import GridPlan, NativeGrid, make_plan
from strokeseg.data.nifti import write_nifti
from strokeseg.data.readers import ReaderOptions, read_cohort
from strokeseg.errors import ConfigError

ISLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isles22"
PLANES = ("axial", "sagittal", "coronal")


def plan_of(grids, kind="auto", spacing=()):
    return make_plan(grids, kind, ("dwi", "adc"), ("mr", "mr"), PLANES, True, spacing)


def test_one_grid_is_a_fixed_plan_used_voxel_for_voxel():
    grid = NativeGrid((10, 12, 8), np.diag([1.0, 1.0, 1.0, 1.0]))
    plan = plan_of([grid, grid])
    assert plan.kind == "fixed" and plan.shape == (10, 12, 8)
    volume = np.arange(960.0).reshape(10, 12, 8)
    assert plan.to_plan(volume, grid) is volume
    with pytest.raises(ConfigError, match="one grid"):
        plan_of([grid, NativeGrid((9, 12, 8), grid.affine)], "fixed")


def test_target_spacing_is_the_median_ras_spacing_and_the_shape_holds_every_subject():
    las = NativeGrid((20, 10, 6), np.diag([-2.0, 2.0, 3.0, 1.0]))
    ras = NativeGrid((16, 12, 5), np.diag([2.0, 2.0, 3.0, 1.0]))
    fine = NativeGrid((40, 24, 18), np.diag([1.0, 1.0, 1.0, 1.0]))
    plan = plan_of([las, ras, fine])
    assert plan.kind == "target_spacing" and plan.spacing == (2.0, 2.0, 3.0)
    assert plan.shape == (20, 12, 6)
    # an LAS subject is stored in RAS order (its first voxel, far left, lands at the far end of x) and
    # centred (10 voxels along y in a plan of 12: one voxel of padding before it)
    volume = np.zeros(las.shape, np.float32)
    volume[0, 3, 2] = 1.0
    placed = plan.to_plan(volume, las)
    assert np.unravel_index(np.argmax(placed), placed.shape) == (19, 4, 2)


def test_a_subjects_own_slices_are_its_centred_extent_on_a_target_spacing_plan():
    las = NativeGrid((20, 10, 6), np.diag([-2.0, 2.0, 3.0, 1.0]))
    ras = NativeGrid((16, 12, 5), np.diag([2.0, 2.0, 3.0, 1.0]))
    plan = plan_of([las, ras])                                # shape (20, 12, 6)
    assert [plan.extent(ras, axis) for axis in range(3)] == [(2, 17), (0, 11), (0, 4)]
    assert [plan.extent(las, axis) for axis in range(3)] == [(0, 19), (1, 10), (0, 5)]
    volume = plan.to_plan(np.ones(ras.shape, np.float32), ras)   # where the subject's voxels really land
    assert [tuple(np.flatnonzero(volume.any(axis=tuple({0, 1, 2} - {a})))[[0, -1]]) for a in range(3)] == \
        [plan.extent(ras, axis) for axis in range(3)]
    fixed = plan_of([ras, ras])
    assert fixed.extent(ras, 2) == (0, 4)                     # a fixed plan: every slice is the subject's


def test_a_mask_goes_to_the_plan_and_back_unchanged_when_the_spacing_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.diag([-2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = (30, -40, 10)
    grid = NativeGrid((14, 16, 9), affine)
    plan = plan_of([grid, NativeGrid((18, 12, 9), np.diag([2.0, 2.0, 2.5, 1.0]))])
    mask = (rng.random(grid.shape) > 0.7).astype(np.uint8)
    planned = plan.mask_to_plan(mask, grid)
    assert planned.shape == plan.shape and planned.sum() == mask.sum()
    np.testing.assert_array_equal(plan.mask_to_native(planned, grid), mask)
    plan.write(tmp_path)
    assert GridPlan.read(tmp_path) == plan


@pytest.mark.skipif(not ISLES.is_dir(), reason="the shared ISLES'22 case is not here")
def test_the_real_isles_case_round_trips_native_plan_native(tmp_path):
    cohort = read_cohort(ISLES, "isles22", ReaderOptions())
    subject = cohort.subjects[0]
    assert cohort.channels == ("dwi", "adc") and len(cohort.subjects) == 1
    image = nib.load(subject.mask)
    grid = NativeGrid(image.shape, image.affine)
    mask = np.asarray(image.dataobj).astype(np.uint8)
    other = NativeGrid((100, 120, 60), np.diag([1.5, 1.5, 3.0, 1.0]))     # a second grid forces resampling
    plan = plan_of([grid, other], spacing=(2.0, 2.0, 2.0))
    planned = plan.mask_to_plan(mask, grid)
    assert planned.shape == plan.shape and abs(int(planned.sum()) - int(mask.sum())) <= 0.05 * mask.sum()
    back = plan.mask_to_native(planned, grid)
    write_nifti(tmp_path / "back.nii.gz", back, reference=image)
    written = nib.load(tmp_path / "back.nii.gz")
    assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    assert written.header.get_zooms() == image.header.get_zooms()
    assert (back != mask).sum() <= 0.05 * mask.sum()      # the real case's oblique 2 mm grid, resampled twice

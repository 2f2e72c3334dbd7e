"""The MNI grid constant and resampling between an input's own grid and it."""
import numpy as np
import pytest

from strokeseg.data import planes, resample
from strokeseg.evaluate.volume_metrics import dice

# An off-grid LAS volume of 2 mm voxels lying inside the MNI box (x runs right to left).
LAS_SHAPE = (60, 70, 60)
LAS_AFFINE = np.array([[-2.0, 0, 0, 60.0], [0, 2.0, 0, -90.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1]])


def test_the_mni_grid_is_nilearns_mni152_2009_template_and_atlas():
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    assert template.shape == resample.MNI_SHAPE == planes.ATLAS_SHAPE
    np.testing.assert_array_equal(template.affine, resample.MNI_AFFINE)
    assert resample.on_grid(template.shape, template.affine)


def test_on_grid_needs_the_shape_and_the_affine():
    assert resample.on_grid(resample.MNI_SHAPE, resample.MNI_AFFINE + 5e-4)
    assert not resample.on_grid(resample.MNI_SHAPE, resample.MNI_AFFINE + 0.01)
    flipped = resample.MNI_AFFINE @ np.diag([-1.0, 1, 1, 1])       # same shape, LAS
    assert not resample.on_grid(resample.MNI_SHAPE, flipped)
    assert not resample.on_grid((197, 233, 190), resample.MNI_AFFINE)
    assert not resample.on_grid(LAS_SHAPE, LAS_AFFINE)


def blob_mask(shape, affine, centre_mm, radius_mm):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(xyz - centre_mm, axis=-1) <= radius_mm).astype(np.uint8)


def test_a_mask_goes_to_mni_and_back_onto_its_own_grid():
    mask = blob_mask(LAS_SHAPE, LAS_AFFINE, np.array([10.0, -20.0, 5.0]), 12.0)
    mask |= blob_mask(LAS_SHAPE, LAS_AFFINE, np.array([-30.0, 10.0, 20.0]), 5.0)
    on_mni = resample.mask_to_grid(mask, LAS_AFFINE, resample.MNI_SHAPE, resample.MNI_AFFINE)
    assert on_mni.dtype == np.uint8 and on_mni.shape == resample.MNI_SHAPE
    # 1 mm³ voxels against 8 mm³: the same volume within the boundary's partial voxels
    assert int(on_mni.sum()) == pytest.approx(8 * int(mask.sum()), rel=0.15)
    back = resample.from_mni_mask(on_mni, LAS_SHAPE, LAS_AFFINE)
    assert back.dtype == np.uint8 and back.shape == LAS_SHAPE
    assert dice(back, mask) > 0.97
    assert np.count_nonzero(back != mask) <= 0.03 * mask.sum()


def test_intensities_resample_trilinearly_and_exactly_on_the_same_grid():
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in LAS_SHAPE], indexing="ij"), axis=-1)
    world = ijk @ LAS_AFFINE[:3, :3].T + LAS_AFFINE[:3, 3]
    ramp = (world[..., 0] + 2 * world[..., 1] - world[..., 2] + 500).astype(np.float32)  # linear in mm
    on_mni = resample.to_mni(ramp.astype(np.int16), LAS_AFFINE)
    assert on_mni.dtype == np.float32
    # inside the source's field of view a linear function is reproduced (integers did not truncate)
    mni_world = np.array([10.0, -20.0, 5.0])
    i, j, k = np.round(np.linalg.solve(resample.MNI_AFFINE, np.append(mni_world, 1))[:3]).astype(int)
    assert on_mni[i, j, k] == pytest.approx(mni_world[0] + 2 * mni_world[1] - mni_world[2] + 500, abs=0.5)
    assert on_mni[0, 0, 0] == 0                       # outside the field of view
    same = resample.to_grid(ramp, LAS_AFFINE, LAS_SHAPE, LAS_AFFINE)
    np.testing.assert_allclose(same, ramp, atol=1e-3)


def test_axis_aligned_maps_sample_as_the_general_path_and_keep_edge_voxels():
    import nibabel as nib
    from nibabel.processing import resample_from_to

    rng = np.random.default_rng(4)
    data = rng.random((30, 24, 20)).astype(np.float32)
    source = np.array([[0.0, 0.0, -2.0, 40.0], [1.8, 0.0, 0.0, -20.0], [0.0, 2.2, 0.0, 5.0], [0, 0, 0, 1]])
    target = np.diag([1.5, 1.7, 2.1, 1.0])
    target[:3, 3] = (-25.0, -18.0, -3.0)
    shape = (40, 36, 30)
    ours = resample.to_grid(data, source, shape, target)
    general = np.asarray(resample_from_to(nib.Nifti1Image(data, source), (shape, target), order=1,
                                          mode="constant", cval=0.0).dataobj)
    inside = (ours != 0) & (general != 0)
    assert inside.sum() > 0.3 * ours.size
    np.testing.assert_allclose(ours[inside], general[inside], atol=1e-5)
    # a target grid whose first voxel lies exactly on the source's last one keeps that voxel's value
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 29.0
    back = resample.to_grid(data, np.eye(4), (30, 24, 20), flipped)
    np.testing.assert_array_equal(back, data[::-1])


def test_labels_to_grid_is_nearest_neighbour_on_axis_aligned_and_oblique_maps():
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from strokeseg.data.resample import labels_to_grid

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=(9, 8, 7)).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert np.array_equal(labels_to_grid(labels, affine, labels.shape, affine), labels)
    # a flipped, permuted 1 mm target: every voxel takes the label of the source voxel it lies in
    target = np.array([[0.0, -1.0, 0.0, 15.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    out = labels_to_grid(labels, affine, (16, 18, 14), target)
    expected = np.asarray(resample_from_to(nib.Nifti1Image(labels, affine), ((16, 18, 14), target), order=0,
                                           mode="constant", cval=0).dataobj)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    # an oblique target goes through affine_transform and agrees with it
    angle = np.deg2rad(10)
    oblique = np.eye(4)
    oblique[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    out = labels_to_grid(labels, affine, (16, 16, 14), oblique)
    expected = np.asarray(resample_from_to(nib.Nifti1Image(labels, affine), ((16, 16, 14), oblique), order=0,
                                           mode="constant", cval=0).dataobj)
    assert np.array_equal(out, expected)

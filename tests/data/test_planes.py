import numpy as np
import pytest

from strokeseg.data import planes


def test_slices_follow_upstream_axes_on_the_atlas_grid():
    shape = planes.ATLAS_SHAPE
    assert planes.slice_shape(shape, "axial") == (197, 233)
    assert planes.slice_shape(shape, "sagittal") == (233, 189)
    assert planes.slice_shape(shape, "coronal") == (197, 189)
    assert [planes.n_slices(shape, p) for p in ("axial", "sagittal", "coronal")] == [189, 197, 233]


@pytest.mark.parametrize("plane, canvas, offset", [
    ("axial", (208, 240), (6, 3)), ("sagittal", (240, 208), (3, 9)), ("coronal", (208, 208), (5, 9))])
def test_atlas_canvases_are_upstreams(plane, canvas, offset):
    c = planes.canvas_for(planes.ATLAS_SHAPE, plane)
    assert (c.shape, c.offset) == (canvas, offset)
    assert all(s % 16 == 0 for s in c.shape)


def test_other_grids_pad_to_multiple_of_16_and_crop_back_exactly():
    rng = np.random.default_rng(0)
    volume = rng.random((37, 50, 21)).astype(np.float32)
    for plane in ("axial", "sagittal", "coronal"):
        canvas = planes.canvas_for(volume.shape, plane)
        assert all(s % 16 == 0 and s >= t for s, t in zip(canvas.shape, canvas.slice_shape))
        stack = planes.to_stack(volume, plane)
        padded = canvas.pad(stack)
        assert padded.shape == (stack.shape[0],) + canvas.shape
        assert padded.sum() == pytest.approx(stack.sum(), rel=1e-6)   # zeros only outside the region
        np.testing.assert_array_equal(planes.from_stack(canvas.crop(padded), plane), volume)
        assert planes.Canvas.from_dict(canvas.to_dict()) == canvas


def test_take_slice_matches_upstream_indexing():
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    np.testing.assert_array_equal(planes.take_slice(volume, "axial", 2), volume[:, :, 2])
    np.testing.assert_array_equal(planes.take_slice(volume, "sagittal", 1), volume[1])
    np.testing.assert_array_equal(planes.take_slice(volume, "coronal", 3), volume[:, 3, :])
    np.testing.assert_array_equal(planes.to_stack(volume, "coronal")[3], volume[:, 3, :])


def test_pad_rejects_wrong_slice_shape():
    canvas = planes.canvas_for(planes.ATLAS_SHAPE, "axial")
    with pytest.raises(ValueError, match="slice shape"):
        canvas.pad(np.zeros((233, 197)))


@pytest.mark.parametrize("channels, index, expected", [
    (1, 5, [5]), (3, 5, [4, 5, 6]), (4, 5, [4, 5, 6, 7]), (3, 0, [0, 0, 1]), (4, 9, [8, 9, 9, 9])])
def test_neighbour_slices_are_clamped_at_the_edges(channels, index, expected):
    assert planes.neighbour_indices(index, 10, channels).tolist() == expected

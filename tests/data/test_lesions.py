import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from strokeseg.data.lesions import (
    LESION_SIZE_COLUMNS,
    N_LARGEST,
    SLICE_COLUMNS,
    component_sizes,
    lesion_pixels_per_slice,
    slice_statistics,
    subject_statistics,
)
from strokeseg.data.planes import take_slice

PLANES = ("axial", "sagittal", "coronal")


def corner_cubes():
    """Two 2x2x2 cubes touching only at one corner voxel pair."""
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[3:5, 3:5, 3:5] = 1
    return mask


def test_corner_touching_cubes_depend_on_connectivity():
    mask = corner_cubes()
    assert component_sizes(mask, 26).tolist() == [16]
    assert component_sizes(mask, 18).tolist() == [8, 8]
    assert component_sizes(mask, 6).tolist() == [8, 8]


def test_edge_touching_cubes_are_one_at_18_but_two_at_6():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[3:5, 3:5, 1:3] = 1     # shares an edge (along z) with the first cube
    assert component_sizes(mask, 18).tolist() == [16]
    assert component_sizes(mask, 6).tolist() == [8, 8]


def test_component_sizes_sorted_descending_and_2d():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[0, 0, 0] = 1                       # 1
    mask[5:8, 5:8, 5:8] = 1                 # 27
    mask[0:2, 8:10, 0:2] = 1                # 8
    sizes = component_sizes(mask, 6)
    assert sizes.tolist() == [27, 8, 1]
    assert sizes.dtype == np.int64
    plane = np.zeros((5, 5), bool)
    plane[0, 0] = plane[1, 1] = True         # diagonal neighbours
    assert component_sizes(plane, 8).tolist() == [2]
    assert component_sizes(plane, 4).tolist() == [1, 1]
    assert component_sizes(np.zeros((4, 4, 4)), 26).size == 0


def test_invalid_connectivity():
    with pytest.raises(ValueError, match="connectivity"):
        component_sizes(np.ones((3, 3, 3)), 8)
    with pytest.raises(ValueError, match="connectivity"):
        component_sizes(np.ones((3, 3)), 26)


def test_subject_statistics_sorted_sizes_and_padding():
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[0, 0, 0] = 1                  # label 1 in scan order, smallest
    mask[4:7, 4:7, 4:7] = 1            # 27
    mask[9:11, 0:2, 0:2] = 1           # 8
    stats = subject_statistics(mask)
    assert stats["number_of_lesion"] == 3
    assert stats["sum_voxel"] == 36
    assert stats["max_size"] == 27
    assert [stats[c] for c in LESION_SIZE_COLUMNS] == [27, 8, 1] + [0] * 7
    assert all(isinstance(v, int) for v in stats.values())


def test_subject_statistics_more_than_ten_components():
    mask = np.zeros((40, 5, 5), np.uint8)
    # 13 components separated by empty planes, sizes 1..13 voxels along y/z rows
    for k in range(13):
        size = k + 1
        mask[3 * k, np.arange(size) // 5, np.arange(size) % 5] = 1
    stats = subject_statistics(mask)
    assert stats["number_of_lesion"] == 13
    assert stats["sum_voxel"] == sum(range(1, 14))
    assert stats["max_size"] == 13
    assert [stats[c] for c in LESION_SIZE_COLUMNS] == list(range(13, 3, -1))


def test_subject_statistics_empty_mask():
    stats = subject_statistics(np.zeros((4, 4, 4), np.uint8))
    assert stats["number_of_lesion"] == stats["sum_voxel"] == stats["max_size"] == 0
    assert all(stats[c] == 0 for c in LESION_SIZE_COLUMNS)


def hand_volume():
    """A 6x7x5 volume with known per-plane answers."""
    vol = np.zeros((6, 7, 5), np.uint8)
    # axial slice z=1: a diagonal pair (one component at 8-connectivity) and a 2x2 square
    vol[0, 0, 1] = vol[1, 1, 1] = 1
    vol[3:5, 3:5, 1] = 1
    # axial slice z=2: one voxel right above the square (would join it in 3-D)
    vol[3, 3, 2] = 1
    # axial slice z=4: a row of three
    vol[5, 4:7, 4] = 1
    return vol


def test_slice_statistics_axial():
    df = slice_statistics(hand_volume(), "axial")
    assert list(df.columns) == list(SLICE_COLUMNS)
    assert df["slice"].tolist() == [1, 2, 4]
    assert df["number_of_lesion"].tolist() == [2, 1, 1]
    assert df["sum_voxel"].tolist() == [6, 1, 3]
    assert df["max_size"].tolist() == [4, 1, 3]
    assert df["lesion_size_1"].tolist() == [4, 1, 3]
    assert df["lesion_size_2"].tolist() == [2, 0, 0]
    assert (df[list(LESION_SIZE_COLUMNS[2:])] == 0).all().all()
    assert all(dtype == np.int64 for dtype in df.dtypes)


def test_slice_statistics_sagittal_and_coronal():
    vol = hand_volume()
    sag = slice_statistics(vol, "sagittal")          # vol[x]
    assert sag["slice"].tolist() == [0, 1, 3, 4, 5]
    assert sag["number_of_lesion"].tolist() == [1, 1, 1, 1, 1]
    assert sag["sum_voxel"].tolist() == [1, 1, 3, 2, 3]   # x=3: (3,1),(4,1),(3,2) connected
    cor = slice_statistics(vol, "coronal")           # vol[:, y, :]
    assert cor["slice"].tolist() == [0, 1, 3, 4, 5, 6]
    assert cor["number_of_lesion"].tolist() == [1, 1, 1, 2, 1, 1]
    assert cor["sum_voxel"].tolist() == [1, 1, 3, 3, 1, 1]
    row = cor.set_index("slice").loc[4]
    assert (row["lesion_size_1"], row["lesion_size_2"], row["max_size"]) == (2, 1, 2)


def test_slice_components_do_not_join_across_slices():
    vol = np.zeros((5, 5, 5), np.uint8)
    vol[1:4, 1:4, :] = 1               # a 3x3 column through every axial slice
    df = slice_statistics(vol, "axial")
    assert df["number_of_lesion"].tolist() == [1] * 5
    assert df["sum_voxel"].tolist() == [9] * 5


def test_slice_statistics_more_than_ten_in_one_slice():
    vol = np.zeros((30, 30, 3), np.uint8)
    for k in range(12):                # 12 isolated single pixels, plus one big blob
        vol[2 * k, 0, 1] = 1
    vol[10:15, 10:15, 1] = 1
    df = slice_statistics(vol, "axial")
    assert df["slice"].tolist() == [1]
    assert df["number_of_lesion"].tolist() == [13]
    assert df["sum_voxel"].tolist() == [37]
    assert [int(df[c].iloc[0]) for c in LESION_SIZE_COLUMNS] == [25] + [1] * 9


def test_slice_statistics_empty():
    df = slice_statistics(np.zeros((4, 5, 6), np.uint8), "coronal")
    assert list(df.columns) == list(SLICE_COLUMNS) and len(df) == 0


@pytest.mark.parametrize("plane", PLANES)
def test_slice_statistics_match_per_slice_labelling(plane):
    rng = np.random.default_rng(7)
    vol = (rng.random((17, 19, 13)) < 0.25).astype(np.uint8)
    vol[:, :, 5] = 0                                   # an empty slice in the middle
    df = slice_statistics(vol, plane)
    expected = []
    n = vol.shape[{"sagittal": 0, "coronal": 1, "axial": 2}[plane]]
    for k in range(n):
        sl = take_slice(vol, plane, k)
        if not sl.any():
            continue
        labels, count = ndimage.label(sl, structure=np.ones((3, 3)))
        sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
        top = list(sizes[:N_LARGEST]) + [0] * max(0, N_LARGEST - sizes.size)
        expected.append([k, count, int(sizes.sum()), int(sizes[0])] + top)
    expected = pd.DataFrame(expected, columns=list(SLICE_COLUMNS)).astype(np.int64)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), expected)


@pytest.mark.parametrize("plane", PLANES)
def test_lesion_pixels_per_slice(plane):
    vol = hand_volume()
    counts = lesion_pixels_per_slice(vol, plane)
    n = vol.shape[{"sagittal": 0, "coronal": 1, "axial": 2}[plane]]
    assert counts.dtype == np.int64 and counts.shape == (n,)
    assert counts.sum() == vol.sum() == 10
    assert counts.tolist() == [int(take_slice(vol, plane, k).sum()) for k in range(n)]
    df = slice_statistics(vol, plane)
    assert counts[df["slice"].to_numpy()].tolist() == df["sum_voxel"].tolist()
    assert np.count_nonzero(counts) == len(df)


def test_lesion_pixels_per_slice_empty_and_bad_plane():
    assert lesion_pixels_per_slice(np.zeros((3, 4, 5)), "coronal").tolist() == [0] * 4
    with pytest.raises(ValueError):
        lesion_pixels_per_slice(np.zeros((3, 4, 5)), "oblique")


def test_statistics_do_not_depend_on_memory_order():
    # nibabel returns Fortran-ordered arrays; the bounding-box shortcut must handle both orders.
    rng = np.random.default_rng(3)
    mask = (rng.random((30, 26, 22)) > 0.97).astype(np.uint8)
    fortran = np.asfortranarray(mask)
    assert subject_statistics(fortran) == subject_statistics(mask)
    for plane in ("axial", "sagittal", "coronal"):
        pd.testing.assert_frame_equal(slice_statistics(fortran, plane), slice_statistics(mask, plane))

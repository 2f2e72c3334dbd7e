"""Volume stores: a round trip of images, masks, index and capped foreground lists; patch reads that
equal slicing inside the volume and pad with 0 outside it; memory maps that do not outlive a read."""
from __future__ import annotations

import json

import numpy as np
import pytest

from strokeseg.data.volume_stores import VolumeStore, capped_foreground, write_volume_store
from strokeseg.errors import InputError

SHAPE = (20, 24, 18)


def cohort(n: int = 4, channels: int = 2, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Random uint8 images; subject 1 has no lesion, subject 2 a large one (more voxels than the cap)."""
    rng = np.random.default_rng(seed)
    subjects = []
    for i in range(n):
        images = rng.integers(0, 256, size=(channels, *SHAPE), dtype=np.uint8)
        mask = np.zeros(SHAPE, np.uint8)
        if i == 2:
            mask[2:12, 3:15, 4:10] = 1           # 720 voxels
        elif i != 1:
            mask[i:i + 3, 5:8, 9:11] = 1         # 18 voxels
        subjects.append((f"sub-{i:03d}", images, mask))
    return subjects


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volumes") / "store"
    subjects = cohort()
    # A generator: the writer must not need the cohort as a list.
    write_volume_store(folder, (s for s in subjects), n_subjects=len(subjects), channels=["dwi", "adc"],
                       max_foreground=100, seed=7, extra_geometry={"spacing": [2.0, 2.0, 2.0]})
    return folder, subjects


def test_round_trip_of_images_masks_index_and_geometry(store):
    folder, subjects = store
    opened = VolumeStore(folder)
    assert np.load(folder / "images.npy", mmap_mode="r").shape == (4, 2, *SHAPE)
    assert np.load(folder / "masks.npy", mmap_mode="r").dtype == np.uint8
    assert opened.shape == SHAPE and opened.channels == ("dwi", "adc") and opened.dtype == np.uint8
    assert json.loads((folder / "geometry.json").read_text())["spacing"] == [2.0, 2.0, 2.0]
    assert opened.subject_names == [s[0] for s in subjects]
    for position, (name, images, mask) in enumerate(subjects):
        stored_images, stored_mask = opened.volume(position)
        np.testing.assert_array_equal(stored_images, images)
        np.testing.assert_array_equal(stored_mask, mask)
        assert opened.position(name) == position
        assert opened.lesion_voxels(position) == int(mask.sum())


def test_foreground_lists_are_capped_inside_the_lesion_and_empty_without_one(store):
    folder, subjects = store
    opened = VolumeStore(folder)
    assert np.load(folder / "foreground.npy").dtype == np.int16
    for position, (_, _, mask) in enumerate(subjects):
        voxels = opened.foreground(position)
        assert voxels.shape == (min(int(mask.sum()), 100), 3)
        if len(voxels):
            assert mask[tuple(voxels.T)].all()
            assert len(np.unique(voxels, axis=0)) == len(voxels)     # drawn without replacement
    assert opened.foreground(1).shape == (0, 3)
    assert len(opened.foreground(0)) == 18                          # under the cap: every voxel
    assert len(opened.foreground(2)) == 100 < opened.lesion_voxels(2)


def test_the_capped_draw_is_reproducible_and_depends_on_the_seed():
    mask = np.zeros(SHAPE, np.uint8)
    mask[:10, :10, :10] = 1
    first, again, other = (capped_foreground(mask, 50, s) for s in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(capped_foreground(mask, 5000, 3)) == 1000


def test_patches_equal_slicing_inside_and_are_zero_padded_outside(store):
    folder, subjects = store
    opened = VolumeStore(folder)
    _, images, mask = subjects[2]
    inside, inside_mask = opened.patch(2, (2, 4, 1), (16, 16, 16))
    assert inside.dtype == np.float32 and inside.shape == (16, 16, 16, 2)
    np.testing.assert_array_equal(inside, np.moveaxis(images[:, 2:18, 4:20, 1:17], 0, -1).astype(np.float32))
    np.testing.assert_array_equal(inside_mask, mask[2:18, 4:20, 1:17])

    edge, edge_mask = opened.patch(2, (-3, 12, 10), (16, 16, 16))   # leaves at x < 0, y >= 24, z >= 18
    expected = np.zeros((2, 16, 16, 16), np.float32)
    expected[:, 3:, :12, :8] = images[:, 0:13, 12:24, 10:18]
    np.testing.assert_array_equal(edge, np.moveaxis(expected, 0, -1))
    expected_mask = np.zeros((16, 16, 16), np.uint8)
    expected_mask[3:, :12, :8] = mask[0:13, 12:24, 10:18]
    np.testing.assert_array_equal(edge_mask, expected_mask)

    larger, _ = opened.patch(0, (-2, -4, -1), (24, 32, 20))          # the whole volume, padded round it
    np.testing.assert_array_equal(larger[2:22, 4:28, 1:19], np.moveaxis(subjects[0][1], 0, -1))
    assert larger.sum() == subjects[0][1].astype(np.float64).sum()
    outside, outside_mask = opened.patch(0, (40, 0, 0), (16, 16, 16))
    assert not outside.any() and not outside_mask.any()


def test_reads_map_afresh_and_hold_no_array(store):
    folder, _ = store
    opened = VolumeStore(folder)
    images, mask = opened.patch(3, (0, 0, 0), (16, 16, 16))
    voxels = opened.foreground(3)
    held = [v for v in vars(opened).values() if isinstance(v, np.ndarray)]
    assert held == []
    for array in (images, mask, voxels):
        assert not isinstance(array, np.memmap) and not isinstance(array.base, np.memmap)


def test_inconsistent_inputs_are_refused(tmp_path):
    subjects = cohort(2)
    with pytest.raises(InputError, match="n_subjects is required"):
        write_volume_store(tmp_path / "a", (s for s in subjects))
    with pytest.raises(InputError, match="2 subjects written"):
        write_volume_store(tmp_path / "b", subjects, n_subjects=3)
    bad = [subjects[0], ("sub-x", subjects[1][1][:1], subjects[1][2])]
    with pytest.raises(InputError, match="differ from the store"):
        write_volume_store(tmp_path / "c", bad)
    with pytest.raises(InputError, match="not binary"):
        write_volume_store(tmp_path / "d", [("sub-y", subjects[0][1], subjects[0][2] * 2)])
    write_volume_store(tmp_path / "e", subjects)
    with pytest.raises(InputError, match="already holds a store"):
        write_volume_store(tmp_path / "e", subjects)
    with pytest.raises(InputError, match="geometry"):
        VolumeStore(tmp_path / "b")      # interrupted: the geometry is written last
    with pytest.raises(InputError, match="outside"):
        VolumeStore(tmp_path / "e").patch(2, (0, 0, 0), (4, 4, 4))

import json

import numpy as np
import pytest

from strokeseg.config import ConvertConfig
from strokeseg.data import planes
from strokeseg.data.cohort import discover
from strokeseg.data.nifti import load_pair
from strokeseg.data.stores import SliceStore, open_stores
from strokeseg.errors import InputError

from conftest import subject_paths, write_tiny_cohort
from helpers import write_atlas_stores


@pytest.fixture(scope="module")
def stores(tiny_cohort, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stores")
    subjects = discover(tiny_cohort)[:4]
    write_atlas_stores(folder, subjects, ConvertConfig())
    return folder, subjects


def test_every_slice_of_every_subject_is_stored_in_its_canvas(stores):
    folder, subjects = stores
    opened = open_stores(folder)
    for plane, store in opened.items():
        volume = load_pair(subjects[2].t1w, subjects[2].mask)
        n = planes.n_slices(volume.t1.shape, plane)
        images = np.load(folder / plane / "images.npy", mmap_mode="r")
        assert images.shape == (len(subjects) * n,) + store.canvas.shape
        assert store.dtype == np.uint8
        assert all(s % 16 == 0 for s in store.canvas.shape)
        rows = store.rows([subjects[2].subject] * n, np.arange(n))
        masks = store.masks_at(rows)
        # Cropping the canvas gives back exactly the subject's mask volume.
        np.testing.assert_array_equal(planes.from_stack(store.canvas.crop(masks), plane), volume.mask)
        index = store.index[store.index["subject_name"] == subjects[2].subject]
        assert index["lesion_pixels"].sum() == volume.mask.sum()
        assert index["row"].tolist() == rows.tolist()


def test_images_are_the_volume_robust_normalised_t1(stores):
    folder, subjects = stores
    store = SliceStore(folder / "axial")
    volume = load_pair(subjects[0].t1w, subjects[0].mask)
    rows = store.rows([subjects[0].subject] * volume.t1.shape[2], np.arange(volume.t1.shape[2]))
    images = planes.from_stack(store.canvas.crop(store.images_at(rows)[..., 0]), "axial")
    assert images[volume.t1 == 0].max() == 0
    assert images.max() == 255
    # Monotone in the T1 intensity (one window for the whole volume).
    order = np.argsort(volume.t1[volume.t1 > 0])
    assert np.all(np.diff(images[volume.t1 > 0][order].astype(int)) >= 0)
    padding = store.images_at(rows)[:, :store.canvas.offset[0]]
    assert padding.max() == 0


def test_adjacent_slices_become_channels_clamped_at_the_volume_edges(stores):
    folder, subjects = stores
    store = SliceStore(folder / "coronal")
    first, last = store.rows([subjects[1].subject] * 2, [0, store.n_slices - 1])
    four = store.images_at(np.array([first + 5, first, last]), channels=4)
    one = store.images_at(np.arange(first, last + 1), channels=1)[..., 0]
    assert four.shape[-1] == 4
    np.testing.assert_array_equal(four[0], np.moveaxis(one[4:8], 0, -1))          # k-1 .. k+2
    np.testing.assert_array_equal(four[1], np.moveaxis(one[[0, 0, 1, 2]], 0, -1))  # clamped at 0
    np.testing.assert_array_equal(four[2, ..., 3], one[-1])                        # clamped at the end


def test_slice_max_mode_is_upstreams_per_slice_rule(tiny_cohort, tmp_path):
    subjects = discover(tiny_cohort)[:1]
    write_atlas_stores(tmp_path, subjects, ConvertConfig(normalization="slice_max"))
    store = SliceStore(tmp_path / "sagittal")
    geometry = json.loads((tmp_path / "sagittal" / "geometry.json").read_text())
    assert geometry["normalization"] == "slice_max"
    images = store.images_at(np.arange(store.n_slices))[..., 0]
    maxima = images.reshape(len(images), -1).max(axis=1)
    assert set(np.unique(maxima)) <= {0, 255}     # each non-empty slice reaches 255


def test_a_subject_on_another_grid_is_rejected_with_its_file_named(tmp_path):
    cohort = tmp_path / "cohort"
    write_tiny_cohort(cohort, 2)
    odd = write_tiny_cohort(tmp_path / "odd", 1, shape=(20, 24, 16))[0]
    subjects = discover(cohort)
    bad_t1, bad_mask = subject_paths(tmp_path / "odd", odd)
    target_t1, target_mask = subject_paths(cohort, subjects[1].subject)
    bad_t1.replace(target_t1)
    bad_mask.replace(target_mask)
    with pytest.raises(InputError, match=r"T1w\.nii\.gz: volume shape \(20, 24, 16\) differs from the cohort grid"):
        write_atlas_stores(tmp_path / "out", subjects, ConvertConfig())


def test_unknown_subject_or_slice_is_an_error(stores):
    store = SliceStore(stores[0] / "axial")
    with pytest.raises(InputError, match="not in this store"):
        store.rows(["sub-nobody"], [0])
    with pytest.raises(InputError, match="slice index"):
        store.rows([stores[1][0].subject], [store.n_slices])

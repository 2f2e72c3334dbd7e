"""Slice-folder readers (png_slices, kaggle_3m) on tiny PNG/TIFF trees written by the tests."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from strokeseg.data.readers import ReaderOptions, detect, kaggle_3m, png_slices, read_cohort
from strokeseg.data.readers import slice_folders as sf
from strokeseg.data.subjects import SLICE_PLANES
from strokeseg.errors import ConfigError, InputError

H, W = 6, 5          # rows, columns: different, so a wrong transpose cannot pass
PATIENT = "TCGA_CS_4941_19960909"


def slice_image(k: int, rows: int = H, cols: int = W) -> np.ndarray:
    """A distinct 8-bit image for slice number ``k``."""
    return ((np.arange(rows * cols).reshape(rows, cols) * 3 + 17 * k) % 251).astype(np.uint8)


def slice_mask(k: int, high: int = 255, rows: int = H, cols: int = W) -> np.ndarray:
    mask = np.zeros((rows, cols), dtype=np.uint8)
    mask[k % rows, : (k % cols) + 1] = high
    return mask


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def png_tree(root: Path, numbers=range(1, 4), patient: str = "p01", names=None) -> Path:
    for n in numbers:
        name = (names or {}).get(n, f"{n}.png")
        write(root / "images" / patient / name, slice_image(n))
        write(root / "masks" / patient / name, slice_mask(n))
    return root


def kaggle_rgb(k: int) -> np.ndarray:
    """(H, W, 3) in RGB order: R, G, B differ, so a BGR mix-up shows."""
    base = slice_image(k).astype(np.int32)
    return np.stack([base, (base + 80) % 256, (base + 160) % 256], axis=-1).astype(np.uint8)


def kaggle_tree(folder: Path, numbers=range(1, 4), patient: str = PATIENT) -> Path:
    for n in numbers:
        write(folder / patient / f"{patient}_{n}.tif", cv2.cvtColor(kaggle_rgb(n), cv2.COLOR_RGB2BGR))
        write(folder / patient / f"{patient}_{n}_mask.tif", slice_mask(n))
    return folder


def materialised(cohort, tmp_path: Path, index: int = 0):
    subject = cohort.subjects[index]
    return cohort.materialise(subject, tmp_path / "nifti" / subject.subject)


def volume(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# --- order, gaps, duplicates ----------------------------------------------------------------------

def test_numeric_order_of_unpadded_numbers(tmp_path):
    cohort = read_cohort(png_tree(tmp_path / "ct", range(1, 13)), "png_slices")
    done = materialised(cohort, tmp_path)
    ct = volume(done.channel("ct"))
    assert ct.shape == (W, H, 12)
    for k in range(12):
        assert np.array_equal(ct[:, :, k], slice_image(k + 1).T)   # string order would put 10 second


def test_gap_is_an_error_naming_the_folder_and_numbers(tmp_path):
    root = png_tree(tmp_path / "ct", [1, 2, 4, 5])
    with pytest.raises(InputError, match=r"p01: slice numbers have a gap: 3 missing"):
        read_cohort(root, "png_slices")


def test_duplicate_number_is_an_error(tmp_path):
    root = png_tree(tmp_path / "ct", [1, 2])
    write(root / "images" / "p01" / "01.png", slice_image(1))
    write(root / "masks" / "p01" / "01.png", slice_mask(1))
    with pytest.raises(InputError, match=r"p01: slice number 1 appears twice \(01.png, 1.png\)"):
        read_cohort(root, "png_slices")


def test_zero_based_run_is_accepted(tmp_path):
    cohort = read_cohort(png_tree(tmp_path / "ct", range(0, 3)), "png_slices")
    assert np.array_equal(volume(materialised(cohort, tmp_path).channel("ct"))[:, :, 0], slice_image(0).T)


def test_non_numeric_name_is_an_error(tmp_path):
    root = png_tree(tmp_path / "ct")
    write(root / "images" / "p01" / "slice_a.png", slice_image(9))
    with pytest.raises(InputError, match=r"slice_a.png: slice file name is not a number"):
        read_cohort(root, "png_slices")


# --- pairs and sizes ------------------------------------------------------------------------------

def test_missing_mask_is_an_error_naming_it(tmp_path):
    root = png_tree(tmp_path / "ct")
    (root / "masks" / "p01" / "2.png").unlink()
    with pytest.raises(InputError, match=r"masks/p01/2.png: mask file not found for image 2.png"):
        read_cohort(root, "png_slices")


def test_mask_without_image_is_an_error(tmp_path):
    root = png_tree(tmp_path / "ct")
    write(root / "masks" / "p01" / "4.png", slice_mask(4))
    with pytest.raises(InputError, match=r"images/p01/4.png: image file not found for mask 4.png"):
        read_cohort(root, "png_slices")


def test_kaggle_missing_mask_is_an_error(tmp_path):
    root = kaggle_tree(tmp_path / "kaggle_3m")
    (root / PATIENT / f"{PATIENT}_3_mask.tif").unlink()
    with pytest.raises(InputError, match=rf"{PATIENT}_3_mask.tif: mask file not found"):
        read_cohort(root, "kaggle_3m")


def test_different_sizes_are_an_error_naming_the_file(tmp_path):
    root = png_tree(tmp_path / "ct")
    write(root / "images" / "p01" / "2.png", slice_image(2, rows=H + 1))
    cohort = read_cohort(root, "png_slices")     # sizes are not read while listing
    with pytest.raises(InputError, match=r"images/p01/2.png: image is 5x7 pixels .* first slice 1.png is 5x6"):
        materialised(cohort, tmp_path)


def test_equal_channel_png_is_grayscale_and_colour_is_an_error(tmp_path):
    root = png_tree(tmp_path / "ct")
    write(root / "images" / "p01" / "1.png", np.repeat(slice_image(1)[..., None], 3, axis=-1))
    cohort = read_cohort(root, "png_slices")
    assert np.array_equal(volume(materialised(cohort, tmp_path).channel("ct"))[:, :, 0], slice_image(1).T)
    write(root / "images" / "p01" / "2.png", kaggle_rgb(2))
    with pytest.raises(InputError, match=r"2.png: colour image"):
        materialised(cohort, tmp_path)


# --- masks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("high", [255, 1])
def test_mask_binarisation_of_0_255_and_0_1(tmp_path, high):
    root = tmp_path / "ct"
    for n in (1, 2):
        write(root / "images" / "p01" / f"{n}.png", slice_image(n))
        write(root / "masks" / "p01" / f"{n}.png", slice_mask(n, high=high))
    mask = volume(materialised(read_cohort(root, "png_slices"), tmp_path).mask)
    assert mask.dtype == np.uint8
    for k, n in enumerate((1, 2)):
        assert np.array_equal(mask[:, :, k], (slice_mask(n) > 0).T.astype(np.uint8))


def test_binarisation_threshold_is_half_the_scale():
    soft = np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8)
    assert sf.binarise_mask(soft, Path("m.png")).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert sf.binarise_mask(np.array([[0, 1]], dtype=np.uint16), Path("m.png")).tolist() == [[0, 1]]
    assert sf.binarise_mask(np.array([[0, 40000]], dtype=np.uint16), Path("m.png")).tolist() == [[0, 1]]


# --- kaggle channels, groups -----------------------------------------------------------------------

def test_kaggle_channels_are_rgb_not_bgr(tmp_path):
    cohort = read_cohort(kaggle_tree(tmp_path / "kaggle_3m"), "kaggle_3m")
    assert cohort.channels == ("pre_contrast", "flair", "post_contrast")
    assert cohort.channel_kinds == ("mr", "mr", "mr")
    done = materialised(cohort, tmp_path)
    for index, name in enumerate(cohort.channels):
        data = volume(done.channel(name))
        for k, n in enumerate((1, 2, 3)):
            assert np.array_equal(data[:, :, k], kaggle_rgb(n)[..., index].T), name
    assert np.array_equal(volume(done.mask)[:, :, 0], (slice_mask(1) > 0).T)


def test_kaggle_group_site_and_nested_root(tmp_path):
    kaggle_tree(tmp_path / "download" / "kaggle_3m")
    kaggle_tree(tmp_path / "download" / "kaggle_3m", patient="TCGA_HT_7602_19951103")
    (tmp_path / "download" / "data.csv").write_text("x\n")
    cohort = read_cohort(tmp_path / "download", "kaggle_3m")     # the parent of kaggle_3m/
    assert [(s.subject, s.group, s.site) for s in cohort.subjects] == [
        ("TCGA_CS_4941_19960909", "TCGA_CS_4941", "CS"), ("TCGA_HT_7602_19951103", "TCGA_HT_7602", "HT")]
    assert cohort.subjects[0].mask == tmp_path / "download" / "kaggle_3m" / PATIENT
    assert cohort.planes == SLICE_PLANES and cohort.allow_empty_masks


def test_kaggle_channel_subset(tmp_path):
    cohort = read_cohort(kaggle_tree(tmp_path / "k"), "kaggle_3m", ReaderOptions(channels=("flair",)))
    done = materialised(cohort, tmp_path)
    assert [name for name, _ in done.channels] == ["flair"]
    assert np.array_equal(volume(done.channel("flair"))[:, :, 1], kaggle_rgb(2)[..., 1].T)


# --- NIfTI geometry -------------------------------------------------------------------------------

def test_nifti_shape_affine_and_mm_units_with_spacing(tmp_path):
    options = ReaderOptions(spacing=(0.5, 0.7, 5.0))
    cohort = read_cohort(png_tree(tmp_path / "ct"), "png_slices", options)
    assert cohort.spacing_known
    done = pickle.loads(pickle.dumps(cohort.materialise))(cohort.subjects[0], tmp_path / "out")
    assert done.channel("ct") == tmp_path / "out" / "p01_ct.nii.gz"
    assert done.mask == tmp_path / "out" / "p01_mask.nii.gz"
    for path in (done.channel("ct"), done.mask):
        image = nib.load(path)
        assert image.shape == (W, H, 3) and image.get_data_dtype() == np.uint8
        assert np.allclose(image.affine, np.diag([0.5, 0.7, 5.0, 1.0]))
        assert image.header.get_xyzt_units()[0] == "mm"


def test_nifti_units_unknown_without_spacing(tmp_path):
    cohort = read_cohort(kaggle_tree(tmp_path / "k"), "kaggle_3m")
    assert not cohort.spacing_known
    image = nib.load(materialised(cohort, tmp_path).channel("flair"))
    assert np.allclose(image.affine, np.eye(4))
    assert int(image.header["xyzt_units"]) == 0


# --- detection ------------------------------------------------------------------------------------

def test_detect_finds_each_layout(tmp_path):
    assert detect(png_tree(tmp_path / "ct")) == "png_slices"
    assert detect(kaggle_tree(tmp_path / "kaggle" / "kaggle_3m")) == "kaggle_3m"
    assert detect(tmp_path / "kaggle") == "kaggle_3m"
    assert not png_slices.matches(tmp_path / "kaggle") and not kaggle_3m.matches(tmp_path / "ct")


def test_bad_spacing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--spacing"):
        read_cohort(png_tree(tmp_path / "ct"), "png_slices", ReaderOptions(spacing=(1.0, 0.0, 1.0)))


# --- slice names that are not regular files -------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["png_slices", "kaggle_3m"])
@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("which", ["image", "mask"])
def test_a_slice_that_is_not_a_regular_file_is_an_error_not_a_slice_fewer(tmp_path, layout, kind, which):
    """The last slice as a FIFO or a folder: before, both files of it left out silently (one slice fewer)."""
    if layout == "png_slices":
        root = png_tree(tmp_path / "ct", range(1, 4))
        image, mask = root / "images" / "p01" / "3.png", root / "masks" / "p01" / "3.png"
    else:
        root = kaggle_tree(tmp_path / "kaggle_3m", range(1, 4))
        image = root / PATIENT / f"{PATIENT}_3.tif"
        mask = root / PATIENT / f"{PATIENT}_3_mask.tif"
    for path in (image, mask):
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
    path = image if which == "image" else mask
    if which == "mask":                                  # the image is a regular file again
        image.rmdir() if kind == "folder" else image.unlink()
        write(image, slice_image(3) if layout == "png_slices" else kaggle_rgb(3))
    with pytest.raises(InputError) as caught:
        read_cohort(root, layout)
    assert caught.value.path == str(path)
    assert caught.value.fault == f"not a regular file ({'a FIFO' if kind == 'fifo' else 'a folder'})"


def test_read_pixels_refuses_a_fifo_without_opening_it(tmp_path):
    path = tmp_path / "1.png"
    os.mkfifo(path)
    with pytest.raises(InputError, match=r"not a regular file \(a FIFO\)"):
        sf.read_pixels(path)

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.data.nifti import (
    SubjectVolumes,
    load_channels,
    load_image,
    load_mask,
    load_pair,
    load_t1,
    same_affine,
    write_nifti,
)
from strokeseg.errors import InputError

SHAPE = (12, 14, 10)
AFFINE = np.array([[-1.0, 0, 0, 98], [0, 1.0, 0, -134], [0, 0, 1.5, -72], [0, 0, 0, 1]])


def save(path: Path, data, affine=AFFINE, codes=4) -> Path:
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_sform(affine, code=codes)
    img.header.set_qform(affine, code=codes)
    nib.save(img, path)
    return path


def t1_data(seed=0):
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def mask_data():
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:6, 4:8, 2:5] = 1
    return mask


@pytest.fixture
def t1_file(tmp_path):
    return save(tmp_path / "sub-x_T1w.nii.gz", t1_data())


@pytest.fixture
def mask_file(tmp_path):
    return save(tmp_path / "sub-x_mask.nii.gz", mask_data())


def fault(info, path: Path, text: str):
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert text in message, message
    assert "\n" not in message
    assert info.value.path == str(path)


# ---------------------------------------------------------------- loading and validation
def test_integer_t1_stays_as_stored_and_scaled_data_become_float32(tmp_path):
    ints = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) % 900
    data, _ = load_t1(save(tmp_path / "int16.nii.gz", ints))
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, ints)
    img = nib.Nifti1Image(ints, AFFINE)
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, tmp_path / "scaled.nii.gz")
    scaled, _ = load_t1(tmp_path / "scaled.nii.gz")
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, ints * 0.5 + 10)


def test_load_t1_roundtrip(t1_file):
    data, img = load_t1(t1_file)
    assert data.dtype == np.float32 and data.shape == SHAPE
    np.testing.assert_array_equal(data, t1_data())
    assert same_affine(img.affine, AFFINE)
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    # the image keeps the data in memory: no second read of the file
    t1_file.unlink()
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), t1_data())


def test_load_pair(t1_file, mask_file):
    pair = load_pair(t1_file, mask_file)
    assert isinstance(pair, SubjectVolumes)
    assert pair.t1.dtype == np.float32 and pair.mask.dtype == np.uint8
    assert pair.mask.shape == pair.t1.shape == SHAPE
    np.testing.assert_array_equal(pair.mask, mask_data())
    assert pair.affine.dtype == np.float64 and pair.affine.shape == (4, 4)
    assert same_affine(pair.affine, AFFINE)
    assert pair.zooms == (1.0, 1.0, 1.5)
    assert isinstance(pair.header, nib.Nifti1Header)


def test_file_not_found(tmp_path):
    path = tmp_path / "nope_T1w.nii.gz"
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "file not found")


def test_not_a_nifti_file(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("this is not an image\n" * 40)
    with pytest.raises(InputError) as info:
        load_image(path)
    fault(info, path, "not a NIfTI file")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"\x00" * 600)
    with pytest.raises(InputError) as info:
        load_image(fake)
    fault(info, fake, "not a NIfTI file")


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.97, -4])
def test_truncated_gzip(tmp_path, t1_file, keep):
    raw = t1_file.read_bytes()
    cut = len(raw) + keep if keep < 0 else int(len(raw) * keep)
    path = tmp_path / "cut_T1w.nii.gz"
    path.write_bytes(raw[:cut])
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "corrupt or truncated gzip")


def test_corrupted_gzip_fails_crc(tmp_path, t1_file):
    raw = bytearray(t1_file.read_bytes())
    raw[-12] ^= 0xFF                      # inside the deflate data / crc region
    path = tmp_path / "flip_T1w.nii.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "corrupt or truncated gzip")


def test_truncated_uncompressed(tmp_path):
    full = save(tmp_path / "full.nii", t1_data())
    path = tmp_path / "cut.nii"
    path.write_bytes(full.read_bytes()[:1000])
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "truncated data")


def test_4d_volume(tmp_path):
    path = save(tmp_path / "fmri.nii.gz", np.random.default_rng(0).random(SHAPE + (2,), dtype=np.float32))
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "4-D volume (shape (12, 14, 10, 2)), expected 3-D")
    single = save(tmp_path / "single.nii.gz", t1_data()[..., None])   # strict: trailing 1 too
    with pytest.raises(InputError) as info:
        load_t1(single)
    fault(info, single, "4-D volume")


def test_non_finite(tmp_path):
    data = t1_data()
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    path = save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "non-finite intensities (2 NaN/inf voxels)")


def test_constant_image(tmp_path):
    path = save(tmp_path / "flat.nii.gz", np.full(SHAPE, 7, np.int16))
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "constant image")


def test_mask_with_value_two(tmp_path, t1_file):
    data = mask_data()
    data[0, 0, 0] = 2
    path = save(tmp_path / "labels_mask.nii.gz", data)
    with pytest.raises(InputError) as info:
        load_pair(t1_file, path)
    fault(info, path, "mask has values other than 0 and 1 (2)")
    assert "binarize=True" in str(info.value)
    pair = load_pair(t1_file, path, binarize=True)
    assert set(np.unique(pair.mask).tolist()) == {0, 1}
    assert pair.mask.sum() == mask_data().sum() + 1


def test_float_mask(tmp_path):
    ok = save(tmp_path / "float_ok.nii.gz", mask_data().astype(np.float32))
    assert load_mask(ok).dtype == np.uint8
    soft = mask_data().astype(np.float32) * 0.5
    path = save(tmp_path / "soft.nii.gz", soft)
    with pytest.raises(InputError) as info:
        load_mask(path)
    fault(info, path, "mask has values other than 0 and 1 (0.5)")
    np.testing.assert_array_equal(load_mask(path, binarize=True), mask_data())


def test_empty_mask(tmp_path):
    path = save(tmp_path / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError) as info:
        load_mask(path)
    fault(info, path, "empty mask (no lesion voxels)")
    assert load_mask(path, allow_empty=True).sum() == 0


def test_mask_shape_mismatch_is_named_on_the_mask(tmp_path, t1_file):
    path = save(tmp_path / "small_mask.nii.gz", np.ones((12, 14, 9), np.uint8))
    with pytest.raises(InputError) as info:
        load_pair(t1_file, path)
    fault(info, path, "mask shape (12, 14, 9) differs from T1 shape (12, 14, 10)")


def test_mask_affine_mismatch(tmp_path, t1_file):
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    path = save(tmp_path / "moved_mask.nii.gz", mask_data(), affine=shifted)
    with pytest.raises(InputError) as info:
        load_pair(t1_file, path)
    fault(info, path, "mask affine differs from T1 affine")


def test_same_affine():
    assert same_affine(AFFINE, AFFINE + 1e-6)
    assert not same_affine(AFFINE, AFFINE + 1e-3)
    assert same_affine(AFFINE, AFFINE + 1e-3, atol=1e-2)


# ---------------------------------------------------------------- writing
def test_write_nifti_roundtrip_keeps_geometry(tmp_path, t1_file):
    _, reference = load_t1(t1_file)
    out = tmp_path / "pred_mask.nii.gz"
    write_nifti(out, mask_data().astype(np.float64), reference)
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask_data())
    assert np.asanyarray(back.dataobj).dtype == np.uint8
    assert same_affine(back.affine, AFFINE)
    assert back.header.get_zooms() == (1.0, 1.0, 1.5)
    assert int(back.header["sform_code"]) == 4 and int(back.header["qform_code"]) == 4
    np.testing.assert_allclose(back.header.get_sform(), AFFINE)
    np.testing.assert_allclose(back.header.get_qform(), AFFINE, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred_mask.nii.gz", t1_file.name]
    assert load_mask(out, shape=SHAPE, affine=AFFINE).sum() == mask_data().sum()


def test_write_nifti_with_affine_only_and_float(tmp_path):
    out = tmp_path / "prob.nii"
    write_nifti(out, t1_data(), affine=AFFINE, dtype=np.float32)
    back = nib.load(out)
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), t1_data())
    assert same_affine(back.affine, AFFINE)


def test_write_nifti_replaces_atomically_and_leaves_nothing_on_failure(tmp_path, t1_file, monkeypatch):
    _, reference = load_t1(t1_file)
    out = tmp_path / "mask.nii.gz"
    write_nifti(out, mask_data(), reference)
    before = out.read_bytes()

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(out, np.zeros(SHAPE), reference)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", t1_file.name]


def test_write_nifti_needs_geometry(tmp_path):
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "x.nii.gz", mask_data())
    assert list(tmp_path.iterdir()) == []


def test_gzip_helper_is_real_gzip(t1_file):
    # the fixtures really are gzip files, so the truncation tests exercise the gzip path
    assert gzip.decompress(t1_file.read_bytes())[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")


def test_channels_share_the_first_channels_grid(tmp_path, mask_file):
    dwi = save(tmp_path / "x_dwi.nii.gz", t1_data(1))
    adc = save(tmp_path / "x_adc.nii.gz", t1_data(2))
    loaded = load_channels([("dwi", dwi), ("adc", adc)], mask_file)
    assert len(loaded.images) == 2 and loaded.mask.sum() == mask_data().sum()
    np.testing.assert_array_equal(loaded.images[1], t1_data(2))
    assert load_channels([("dwi", dwi)]).mask is None                        # a case to predict
    other = save(tmp_path / "x_flair.nii.gz", np.random.default_rng(3).normal(size=(12, 14, 9)).astype(np.float32))
    with pytest.raises(InputError) as info:
        load_channels([("dwi", dwi), ("flair", other)], mask_file)
    fault(info, other, "channel flair has shape (12, 14, 9), channel dwi (12, 14, 10): channels must share one grid")
    moved = AFFINE.copy()
    moved[:3, 3] += 5.0                                                      # same shape, 5 mm elsewhere
    shifted = save(tmp_path / "x_shift.nii.gz", t1_data(4), affine=moved)
    with pytest.raises(InputError) as info:
        load_channels([("dwi", dwi), ("adc", shifted)], mask_file)
    fault(info, shifted, "channel adc has another affine than channel dwi")
    with pytest.raises(InputError) as info:
        load_channels([("dwi", dwi), ("adc", tmp_path / "none.nii.gz")], mask_file)
    fault(info, tmp_path / "none.nii.gz", "adc file not found")


# ------------------------------------------------------------ what is refused before it is opened
def test_non_regular_files_are_refused_without_being_opened(tmp_path):
    import os

    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)                       # opening it would wait for a writer forever
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to("loop.nii.gz")
    dangling = tmp_path / "gone.nii.gz"
    dangling.symlink_to(tmp_path / "nowhere.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    for path, text in ((fifo, "not a regular file (a FIFO)"), (loop, "symbolic link loop"),
                       (dangling, "file not found (dangling symbolic link"), (empty, "empty file (0 bytes)"),
                       (folder, "not a regular file (a folder)")):
        with pytest.raises(InputError) as info:
            load_t1(path)
        fault(info, path, text)


# ------------------------------------------------------------------------------ geometry
def raw_header(path: Path, sform=None, qform_code=1, pixdim=None) -> Path:
    """A .nii.gz with the header bytes as given (nibabel repairs a zero pixdim when it writes one)."""
    img = nib.Nifti1Image(t1_data(), AFFINE)
    img.set_qform(AFFINE if qform_code else None, code=qform_code)
    img.set_sform(sform, code=2 if sform is not None else 0)
    plain = path.parent / "plain.nii"
    nib.save(img, plain)
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    if pixdim is not None:
        raw[80:92] = np.asarray(pixdim, "<f4").tobytes()   # pixdim[1:4], little-endian NIfTI-1
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_a_singular_or_non_finite_affine_is_a_fault(tmp_path):
    flat = AFFINE.copy()
    flat[:3, 1] = 0
    path = raw_header(tmp_path / "flat.nii.gz", sform=flat, qform_code=0)
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "singular affine (the sform")
    twin = AFFINE.copy()
    twin[:3, 1] = twin[:3, 0]                             # two voxel axes along one direction
    path = raw_header(tmp_path / "twin.nii.gz", sform=twin, qform_code=0)
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "singular affine")
    bad = AFFINE.copy()
    bad[0, 3] = np.nan
    path = raw_header(tmp_path / "nan.nii.gz", sform=bad, qform_code=0)
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "non-finite values in the affine")


def test_zero_voxel_sizes_are_refused_unless_an_sform_gives_them(tmp_path):
    from strokeseg.data.nifti import geometry_warning

    path = raw_header(tmp_path / "zero.nii.gz", qform_code=1, pixdim=(1, 0, 1.5))
    with pytest.raises(InputError) as info:
        load_t1(path)
    fault(info, path, "zero voxel size in the header (pixdim 1 x 0 x 1.5) and no sform")
    path = raw_header(tmp_path / "no_codes_zero.nii.gz", qform_code=0, pixdim=(0, 0, 0))
    with pytest.raises(InputError):
        load_t1(path)
    _, img = load_t1(raw_header(tmp_path / "sform.nii.gz", sform=AFFINE, qform_code=0, pixdim=(0, 0, 0)))
    assert same_affine(img.affine, AFFINE)
    assert "the sform's voxel size (1 x 1 x 1.5 mm) was used" in geometry_warning(img)
    _, img = load_t1(raw_header(tmp_path / "no_codes.nii.gz", qform_code=0))
    assert "no orientation in the header (qform and sform codes 0)" in geometry_warning(img)
    _, img = load_t1(save(tmp_path / "fine.nii.gz", t1_data()))
    assert geometry_warning(img) == ""
    loaded = load_channels([("t1w", tmp_path / "no_codes.nii.gz")])
    assert len(loaded.warnings) == 1 and loaded.warnings[0].startswith(f"{tmp_path / 'no_codes.nii.gz'}: ")

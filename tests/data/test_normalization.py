import numpy as np
import pytest

from strokeseg.config import ConvertConfig
from strokeseg.data import normalization

RULES = ("robust", "nonzero")     # convert.head_region


def test_slice_max_is_upstreams_rule_with_a_guard_for_empty_slices():
    stack = np.zeros((3, 2, 2), dtype=np.float32)
    stack[0] = [[1, 2], [3, 4]]
    stack[2] = [[10, 0], [0, 5]]
    out = normalization.slice_max(stack)
    np.testing.assert_allclose(out[0], np.array([[1, 2], [3, 4]]) / 4 * 255)
    np.testing.assert_array_equal(out[1], 0)          # upstream would give NaN
    assert out[2].max() == 255 and np.isfinite(out).all()


@pytest.mark.parametrize("rule", RULES)
def test_volume_robust_uses_one_window_for_the_whole_volume(rule):
    rng = np.random.default_rng(0)
    volume = np.zeros((10, 10, 10), dtype=np.float32)
    volume[2:8, 2:8, 2:8] = rng.uniform(100, 200, (6, 6, 6))
    volume[5, 5, 5] = 1e6                                 # an outlier must not squash the rest
    out = normalization.volume_robust(volume, (0.5, 99.5), head_region=rule)
    assert out.min() == 0 and out.max() == 255
    assert out[volume == 0].max() == 0                    # background stays 0
    inside = out[2:8, 2:8, 2:8]
    assert np.percentile(inside, 50) > 100                # not crushed towards 0 by the outlier


@pytest.mark.parametrize("rule", RULES)
def test_volume_robust_maps_equal_intensities_equally_in_every_slice_unlike_slice_max(rule):
    volume = np.full((4, 6, 6), 100.0, dtype=np.float32)
    volume[0, 0, 0] = 150.0                               # same value in two slices ...
    volume[1, 0, 0] = 150.0
    volume[1, 5, 5] = 300.0                               # ... whose maxima differ
    robust = normalization.volume_robust(volume, (0.0, 100.0), head_region=rule)
    assert robust[0, 0, 0] == robust[1, 0, 0]
    per_slice = normalization.slice_max(volume)
    assert per_slice[0, 0, 0] != per_slice[1, 0, 0]


def test_store_dtype_rounds_and_clips_to_uint8():
    values = np.array([-3.0, 0.4, 0.6, 254.6, 300.0])
    np.testing.assert_array_equal(normalization.to_store_dtype(values, "uint8"), [0, 0, 1, 255, 255])
    np.testing.assert_array_equal(normalization.to_store_dtype(np.array([0.5, 1.5, 2.49]), "uint8"), [1, 2, 2])
    assert normalization.to_store_dtype(values, "float16").dtype == np.float16


@pytest.mark.parametrize("rule", RULES)
def test_volume_robust_gives_the_same_result_for_integer_and_float_volumes(rule):
    rng = np.random.default_rng(1)
    ints = np.zeros((12, 10, 8), dtype=np.int16)
    ints[2:10, 2:8, 1:7] = rng.integers(50, 900, (8, 6, 6))
    for dtype in ("uint8", "float32"):
        np.testing.assert_array_equal(normalization.volume_robust(ints, (1, 99), dtype, rule),
                                      normalization.volume_robust(ints.astype(np.float32), (1, 99), dtype, rule))
    assert np.asfortranarray(ints).flags.f_contiguous
    fortran = normalization.volume_robust(np.asfortranarray(ints), head_region=rule)
    assert fortran.flags.f_contiguous                     # NIfTI's order is kept
    np.testing.assert_array_equal(fortran, normalization.volume_robust(ints, head_region=rule))


def test_robust_maps_every_voxel_so_a_noisy_background_becomes_zero():
    rng = np.random.default_rng(2)
    clean = np.zeros((16, 16, 16), dtype=np.float32)
    clean[3:13, 3:13, 3:13] = rng.uniform(300, 900, (10, 10, 10))
    noisy = np.where(clean > 0, clean, rng.rayleigh(20.0, clean.shape)).astype(np.float32)
    robust = normalization.volume_robust(noisy, (0.5, 99.5), head_region="robust")
    reference = normalization.volume_robust(clean, (0.5, 99.5), head_region="robust")
    assert np.abs(robust - reference).max() <= 2.0        # of 255: the window hardly moves
    assert not robust[clean == 0].any()                   # below the window: 0, as an exact-zero background
    nonzero = normalization.volume_robust(noisy, (0.5, 99.5), head_region="nonzero")
    assert nonzero[clean == 0].any()                      # the old rule's window starts in the noise


@pytest.mark.parametrize("rule", RULES)
def test_channel_volume_passes_the_head_region_and_the_affine_on(rule):
    rng = np.random.default_rng(3)
    volume = np.where(rng.random((14, 12, 10)) < 0.5, rng.uniform(100, 900, (14, 12, 10)), 0).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    convert = ConvertConfig(head_region=rule, robust_percentiles=(2.0, 98.0))
    np.testing.assert_array_equal(normalization.channel_volume(volume, "t1", convert, affine),
                                  normalization.volume_robust(volume, (2.0, 98.0), "uint8", rule, affine))


def test_clip_zscore_is_the_lgg_rule_percentile_clip_then_zscore_over_every_voxel():
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 20, 10), np.float32)
    volume[4:16, 4:16, 2:8] = rng.normal(100, 10, (12, 12, 6))
    volume[10, 10, 5] = 10_000                                        # one hot voxel: clipped away
    convert = ConvertConfig(mr_normalization="clip_zscore", clip_percentiles=(10.0, 99.0), store_dtype="float32")
    out = normalization.channel_volume(volume, "mr", convert)
    lo, hi = np.percentile(volume, [10, 99])
    clipped = np.clip(volume, lo, hi)
    scale = normalization.SCALE / (2 * normalization.ZSCORE_RANGE)
    expected = (clipped - clipped.mean()) / clipped.std() * scale + normalization.SCALE / 2
    np.testing.assert_allclose(out, np.clip(expected, 0, normalization.SCALE), atol=1e-3)
    assert out[0, 0, 0] > 0                                           # the background is z-scored too
    assert out[10, 10, 5] == pytest.approx(out.max()) and out.max() < normalization.SCALE   # clipped at p99
    assert normalization.channel_volume(volume, "mr", ConvertConfig())[0, 0, 0] == 0   # the default keeps zeros

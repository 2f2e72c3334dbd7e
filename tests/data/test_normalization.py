import numpy as np

from strokeseg.data import normalization


def test_slice_max_is_upstreams_rule_with_a_guard_for_empty_slices():
    stack = np.zeros((3, 2, 2), dtype=np.float32)
    stack[0] = [[1, 2], [3, 4]]
    stack[2] = [[10, 0], [0, 5]]
    out = normalization.slice_max(stack)
    np.testing.assert_allclose(out[0], np.array([[1, 2], [3, 4]]) / 4 * 255)
    np.testing.assert_array_equal(out[1], 0)          # upstream would give NaN
    assert out[2].max() == 255 and np.isfinite(out).all()


def test_volume_robust_uses_one_window_for_the_whole_volume():
    rng = np.random.default_rng(0)
    volume = np.zeros((10, 10, 10), dtype=np.float32)
    volume[2:8, 2:8, 2:8] = rng.uniform(100, 200, (6, 6, 6))
    volume[5, 5, 5] = 1e6                                 # an outlier must not squash the rest
    out = normalization.volume_robust(volume, (0.5, 99.5))
    assert out.min() == 0 and out.max() == 255
    assert out[volume == 0].max() == 0                    # background stays 0
    inside = out[2:8, 2:8, 2:8]
    assert np.percentile(inside, 50) > 100                # not crushed towards 0 by the outlier


def test_volume_robust_maps_equal_intensities_equally_in_every_slice_unlike_slice_max():
    volume = np.full((4, 6, 6), 100.0, dtype=np.float32)
    volume[0, 0, 0] = 150.0                               # same value in two slices ...
    volume[1, 0, 0] = 150.0
    volume[1, 5, 5] = 300.0                               # ... whose maxima differ
    robust = normalization.volume_robust(volume, (0.0, 100.0))
    assert robust[0, 0, 0] == robust[1, 0, 0]
    per_slice = normalization.slice_max(volume)
    assert per_slice[0, 0, 0] != per_slice[1, 0, 0]


def test_store_dtype_rounds_and_clips_to_uint8():
    values = np.array([-3.0, 0.4, 0.6, 254.6, 300.0])
    np.testing.assert_array_equal(normalization.to_store_dtype(values, "uint8"), [0, 0, 1, 255, 255])
    np.testing.assert_array_equal(normalization.to_store_dtype(np.array([0.5, 1.5, 2.49]), "uint8"), [1, 2, 2])
    assert normalization.to_store_dtype(values, "float16").dtype == np.float16


def test_volume_robust_gives_the_same_result_for_integer_and_float_volumes():
    rng = np.random.default_rng(1)
    ints = np.zeros((12, 10, 8), dtype=np.int16)
    ints[2:10, 2:8, 1:7] = rng.integers(50, 900, (8, 6, 6))
    for dtype in ("uint8", "float32"):
        np.testing.assert_array_equal(normalization.volume_robust(ints, (1, 99), dtype),
                                      normalization.volume_robust(ints.astype(np.float32), (1, 99), dtype))
    assert np.asfortranarray(ints).flags.f_contiguous
    np.testing.assert_array_equal(normalization.volume_robust(np.asfortranarray(ints)),
                                  normalization.volume_robust(ints))

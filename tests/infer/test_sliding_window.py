import numpy as np
import pytest

from strokeseg.infer.sliding_window import gaussian_importance, sliding_window_probability, window_starts


@pytest.mark.parametrize("size, patch, step, starts", [
    (110, 64, 0.5, [0, 23, 46]),       # nnU-Net's rule: steps of at most half the patch, spread evenly
    (128, 64, 0.5, [0, 32, 64]),
    (128, 64, 1.0, [0, 64]),
    (64, 64, 0.5, [0]),
    (40, 64, 0.5, [0]),                # smaller than the patch: one (padded) window
    (65, 16, 0.5, [0, 7, 14, 21, 28, 35, 42, 49]),   # ceil(49 / 8) + 1 = 8 windows, 7 apart
])
def test_window_starts(size, patch, step, starts):
    assert window_starts(size, patch, step) == starts
    assert starts[-1] == max(size - patch, 0)


@pytest.mark.parametrize("patch", [(16, 16, 16), (16, 32, 48), (7, 8, 9)])
def test_the_importance_map_is_a_symmetric_gaussian_peaking_in_the_middle_without_zeros(patch):
    weights = gaussian_importance(patch)
    assert weights.shape == patch and weights.dtype == np.float32
    assert weights.max() == 1.0 and weights.min() > 0
    for axis in range(3):
        np.testing.assert_allclose(weights, np.flip(weights, axis), rtol=1e-6)
    centre = tuple((p - 1) // 2 for p in patch)
    assert weights[centre] == pytest.approx(weights.max(), rel=0.2)
    # sigma = patch / 8: one sigma from the middle along x the weight is exp(-1/2) of the middle's
    x = np.arange(patch[0]) - (patch[0] - 1) / 2
    profile = weights[:, centre[1], centre[2]] / weights[:, centre[1], centre[2]].max()
    np.testing.assert_allclose(profile, np.exp(-0.5 * (x / (patch[0] / 8)) ** 2) / np.exp(
        -0.5 * (x / (patch[0] / 8)) ** 2).max(), rtol=1e-5)


def identity(windows):
    return windows[..., :1]


@pytest.mark.parametrize("shape, patch", [((40, 36, 30), (16, 16, 16)), ((20, 12, 9), (16, 16, 16)),
                                          ((33, 47, 21), (16, 32, 16))])
def test_an_identity_model_returns_its_input_through_the_windows(shape, patch):
    volume = np.random.default_rng(0).uniform(0.05, 0.95, shape).astype(np.float32)
    out = sliding_window_probability(identity, volume, patch, batch_size=3)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, volume, atol=1e-5)
    mirrored = sliding_window_probability(identity, volume, patch, batch_size=3, mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(mirrored, volume, atol=1e-5)


def test_a_constant_model_gives_the_constant_and_channels_reach_the_model_last():
    volume = np.random.default_rng(1).uniform(0.1, 0.9, (2, 24, 20, 18)).astype(np.float32)   # (M, X, Y, Z)
    seen = []

    def constant(windows):
        seen.append(windows.shape)
        return np.full(windows.shape[:-1] + (1,), 0.3, np.float32)

    out = sliding_window_probability(constant, volume, (16, 16, 16), batch_size=2)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
    assert all(s[0] <= 2 and s[1:] == (16, 16, 16, 2) for s in seen)
    second = sliding_window_probability(lambda w: w[..., 1:2], volume, (16, 16, 16), batch_size=4)
    np.testing.assert_allclose(second, volume[1], atol=1e-5)


def test_overlapping_windows_are_weighted_towards_their_centres():
    """A model that is right only in a window's middle half is right everywhere once the windows
    overlap by half: the Gaussian lets the centres outweigh the borders."""
    volume = np.full((64, 16, 16), 0.5, np.float32)

    def good_in_the_middle(windows):
        out = np.full(windows.shape[:-1] + (1,), 0.01, np.float32)
        out[:, 4:12] = 0.99
        return out

    out = sliding_window_probability(good_in_the_middle, volume, (16, 16, 16), batch_size=8)
    assert (out[8:56] > 0.5).all()


def test_a_model_returning_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="predict returned shape"):
        sliding_window_probability(lambda w: w[:, :8], np.zeros((16, 16, 16), np.float32), (16, 16, 16))
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window_probability(identity, np.zeros((16, 16, 16), np.float32), (16, 16, 16), mirror_axes=(3,))

"""Training-time intensity augmentation of images: nnU-Net v2's set, order and defaults (NumPy / SciPy).

These transforms change an image's values and never its geometry, so masks are never touched (the
callers pass them through). nnU-Net (``nnUNetTrainer.get_training_transforms``, batchgeneratorsv2)
applies, after its spatial transform and in this order, each with its own probability per sample:

1. additive Gaussian **noise** (p 0.1): one noise level per sample drawn from ``noise_variance``
   for every channel group (nnU-Net synchronises channels here), the noise itself independent per
   pixel;
2. Gaussian **blur** (p 0.2): each channel group blurred with probability 0.5 (nnU-Net's
   ``p_per_channel``), with a sigma drawn from ``blur_sigma`` per group and per spatial axis
   (mirrored borders, kernel to ±3 sigma as nnU-Net's);
3. multiplicative **brightness** (p 0.15): a factor per group;
4. **contrast** (p 0.15): a factor per group, scaling about the mean, then clipped to the values'
   original min/max (nnU-Net's ``preserve_range``);
5. simulated **low resolution** (p 0.25): each group with probability 0.5, downsampled by a factor
   drawn from ``low_resolution_zoom`` (one per group, the same on every spatial axis) with nearest
   neighbour ("nearest-exact"), then resized back with linear interpolation (``align_corners``
   false), as batchgeneratorsv2's ``SimulateLowResolutionTransform`` that nnU-Net v2 uses (nnU-Net
   v1, with batchgenerators, upsampled with cubic splines);
6. **gamma of the inverted image** (p 0.1) and 7. **gamma** (p 0.3): a gamma per group; the values
   are rescaled to [0, 1] by their min/max, raised to the gamma, scaled back, and then given back
   their mean and standard deviation (nnU-Net's ``retain_stats``); the inverted variant negates
   the values before and after.

Brightness, contrast and gamma factors follow nnU-Net's ``BGContrast`` rule: with probability 0.5
(when lo < 1) the factor is drawn from [lo, 1), otherwise from [max(lo, 1), hi]; when hi <= 1 it is
always drawn from [lo, hi] (nnU-Net would leave the range there; its defaults never do).

**Channel groups.** nnU-Net's channels are modalities, and it draws per channel where it says so.
A 2-D sample's channels are C adjacent slices of each of M image channels (input channel
``c·M + m``, :meth:`strokeseg.data.stores.SliceStore.images_at`): here a *group* is one image
channel m with its C slices, a thin slab of one modality. The slices of a slab share every draw
(a scanner's brightness or blur does not change from one slice to the next) and its statistics are
pooled; modalities draw independently, as nnU-Net's channels do. A 3-D patch's channels are
modalities: every channel is its own group (``groups=None``).

**Units and the foreground.** nnU-Net augments images z-scored within the non-zero (head) mask and
then sets what lies outside that mask back to 0 (its ``MaskImageTransform``, used for such data,
e.g. skull-stripped brain MRI like ATLAS). Our images are on a 0..255 scale with 0 outside the
head, so here:

- the **one adaptation**: the noise's standard deviation is the draw times the group's foreground
  (non-zero pixels) standard deviation. nnU-Net calls the range a variance but uses the draw as the
  noise's standard deviation on images whose foreground std is 1, so its (0, 0.1) keeps exactly the
  same meaning relative to the image;
- every other transform is scale-free (it commutes with multiplying the image by a constant), and
  the statistics they use (mean, std, min, max) are those of the foreground pixels, so contrast and
  gamma act on the head as nnU-Net's act on its normalised foreground;
- the pixels that are 0 on entry stay 0, as nnU-Net's mask keeps its background (blur and low
  resolution smear the head's edge into the background; only the head's side of that edge stays);
- at the end the values are clipped to [0, 255]: the range every inference input has (stores are
  uint8 or hold 0..255), so the model never trains on values it will never be shown; above 255 a
  brighter scan saturates as the conversion's clipping saturates it.

**Stateless.** A sample's draws depend only on its seed words (for 2-D training (epoch seed, batch
position, slot), for 3-D (seed, epoch, step, slot)) through a generator tagged apart from the other
augmentation streams. Every sample draws the same values in the same order whatever the settings
(a probability of 0 skips the work, not the draw), so a resumed run augments bit-exactly as the
uninterrupted one. The noise field comes from its own generator, seeded by one of those draws, so
it costs nothing when no noise is applied.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeseg.config import INTENSITY_RANGES, INTENSITY_TRANSFORMS, TrainingConfig, intensity_settings_error

_TAG = zlib.crc32(b"intensity_augmentation")   # keeps these streams apart from the spatial ones'

# nnU-Net's fixed settings (nnUNetTrainer.get_training_transforms), not config values.
BLUR_P_PER_CHANNEL = 0.5
BLUR_TRUNCATE = 3.0                 # kernel radius in sigmas: batchgeneratorsv2's kernel of ~6 sigma + 1
LOW_RESOLUTION_P_PER_CHANNEL = 0.5
VALUE_RANGE = (0.0, 255.0)          # the inputs' range at inference
_EPS = 1e-7

# The transforms in nnU-Net's order; the probability field of each is f"{name}_probability".
TRANSFORMS = INTENSITY_TRANSFORMS


@dataclass(frozen=True)
class IntensityTransform:
    """One sample's draw: per channel group, each transform's parameter, or None where it is not
    applied. ``noise`` is the noise level (None: no noise) and ``noise_seed`` seeds its field."""

    noise: float | None
    noise_seed: int
    blur: tuple[tuple[float, ...] | None, ...]
    brightness: tuple[float | None, ...]
    contrast: tuple[float | None, ...]
    low_resolution: tuple[float | None, ...]
    inverted_gamma: tuple[float | None, ...]
    gamma: tuple[float | None, ...]

    @property
    def groups(self) -> int:
        return len(self.blur)

    @property
    def identity(self) -> bool:
        per_group = (self.blur, self.brightness, self.contrast, self.low_resolution, self.inverted_gamma, self.gamma)
        return self.noise is None and all(v is None for values in per_group for v in values)


@dataclass(frozen=True)
class IntensityAugmentation:
    """nnU-Net's intensity transforms with their probabilities and ranges (defaults: nnU-Net's, as
    :class:`strokeseg.config.TrainingConfig` holds them; the same checks as the config's)."""

    noise_probability: float = TrainingConfig.noise_probability
    noise_variance: tuple[float, float] = TrainingConfig.noise_variance
    blur_probability: float = TrainingConfig.blur_probability
    blur_sigma: tuple[float, float] = TrainingConfig.blur_sigma
    brightness_probability: float = TrainingConfig.brightness_probability
    brightness_range: tuple[float, float] = TrainingConfig.brightness_range
    contrast_probability: float = TrainingConfig.contrast_probability
    contrast_range: tuple[float, float] = TrainingConfig.contrast_range
    low_resolution_probability: float = TrainingConfig.low_resolution_probability
    low_resolution_zoom: tuple[float, float] = TrainingConfig.low_resolution_zoom
    gamma_probability: float = TrainingConfig.gamma_probability
    inverted_gamma_probability: float = TrainingConfig.inverted_gamma_probability
    gamma_range: tuple[float, float] = TrainingConfig.gamma_range

    def __post_init__(self) -> None:
        for name, _ in INTENSITY_RANGES:
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        error = intensity_settings_error(self)
        if error is not None:
            raise ValueError(error)

    @classmethod
    def from_training(cls, training) -> "IntensityAugmentation":
        """The settings of a :class:`strokeseg.config.TrainingConfig` (``training.intensity_augment``
        says whether to use them at all; that is the caller's business)."""
        return cls(**{name: getattr(training, name) for name in cls.__dataclass_fields__})

    def draw(self, seed: int | Sequence[int], groups: int = 1, rank: int = 2) -> IntensityTransform:
        """The transform of one sample with ``groups`` channel groups and ``rank`` spatial axes; the
        same seed words give the same transform. The draws' count and order depend on (groups,
        rank) only, never on the settings."""
        rng = intensity_rng(seed)
        coins = rng.random(len(TRANSFORMS))
        noise_level, noise_seed = rng.random(), int(rng.integers(2 ** 63))
        blur_coins, blur_sigmas = rng.random(groups), rng.random((groups, rank))
        brightness, contrast = rng.random((2, groups)), rng.random((2, groups))
        low_res_coins, low_res_zoom = rng.random(groups), rng.random(groups)
        inverted_gamma, gamma = rng.random((2, groups)), rng.random((2, groups))
        on = {name: bool(coin < getattr(self, f"{name}_probability")) for name, coin in zip(TRANSFORMS, coins)}

        def per_group(name, draws, make):
            return tuple(make(*draws[..., g]) if on[name] else None for g in range(groups))

        def bg(bounds):
            return lambda coin, u: _bg_contrast(coin, u, *bounds)

        return IntensityTransform(
            noise=_uniform(noise_level, *self.noise_variance) if on["noise"] else None,
            noise_seed=noise_seed,
            blur=tuple(tuple(_uniform(u, *self.blur_sigma) for u in blur_sigmas[g])
                       if on["blur"] and blur_coins[g] < BLUR_P_PER_CHANNEL else None for g in range(groups)),
            brightness=per_group("brightness", brightness, bg(self.brightness_range)),
            contrast=per_group("contrast", contrast, bg(self.contrast_range)),
            low_resolution=tuple(_uniform(low_res_zoom[g], *self.low_resolution_zoom)
                                 if on["low_resolution"] and low_res_coins[g] < LOW_RESOLUTION_P_PER_CHANNEL
                                 else None for g in range(groups)),
            inverted_gamma=per_group("inverted_gamma", inverted_gamma, bg(self.gamma_range)),
            gamma=per_group("gamma", gamma, bg(self.gamma_range)),
        )

    def __call__(self, image: np.ndarray, seed: int | Sequence[int], groups: int | None = None) -> np.ndarray:
        """Augment one sample: image (*spatial, K) (a 2-D slice (h, w, K) or a 3-D patch (d, h, w, K)),
        channel k in group ``k % groups`` (None: every channel its own group). A new float32 array."""
        image = np.asarray(image)
        groups = _groups(image, groups)
        return apply(self.draw(seed, groups, image.ndim - 1), image)


def intensity_rng(seed: int | Sequence[int]) -> np.random.Generator:
    """The generator of one sample (the word count is mixed in as in
    :func:`strokeseg.train.augmentation3d.augmentation_rng`: (5,) and (5, 0) are different streams)."""
    words = [int(w) for w in np.ravel(seed)]
    return np.random.default_rng(np.random.SeedSequence([_TAG, len(words), *words]))


def augment_images(augmentation: IntensityAugmentation, images: np.ndarray, words: Sequence[int],
                   groups: int | None = None) -> np.ndarray:
    """Augment a batch (B, *spatial, K): slot b with seed words (*words, b), stateless, so any slot
    can be recomputed alone. A new float32 array."""
    images = np.asarray(images)
    prefix = [int(w) for w in words]
    return np.stack([augmentation(images[b], (*prefix, b), groups) for b in range(len(images))]) \
        if len(images) else images.astype(np.float32)


def apply(transform: IntensityTransform, image: np.ndarray) -> np.ndarray:
    """Apply one drawn transform to one sample (*spatial, K), K a multiple of ``transform.groups``."""
    image = np.asarray(image)
    groups = _groups(image, transform.groups)
    out = np.array(image, dtype=np.float32)              # a copy: the input is never written
    if transform.identity:
        return _clip(out)
    spatial = out.shape[:-1]
    x = out.reshape(*spatial, out.shape[-1] // groups, groups)   # channel c·G + g -> [..., c, g]
    head = x != 0                                                # the foreground, fixed on entry
    if transform.noise is not None:
        stds = np.array([_stats(x[..., g], head[..., g])[1] for g in range(groups)], dtype=np.float32)
        noise = np.random.default_rng(transform.noise_seed).standard_normal(x.shape, dtype=np.float32)
        x += noise * (np.float32(transform.noise) * stds)
    for g in range(groups):
        group, fg = x[..., g], head[..., g]
        if transform.blur[g] is not None:
            x[..., g] = ndimage.gaussian_filter(group, (*transform.blur[g], 0.0), mode="mirror",
                                                truncate=BLUR_TRUNCATE)
        if transform.brightness[g] is not None:
            group[fg] *= np.float32(transform.brightness[g])
        if transform.contrast[g] is not None:
            _contrast(group, fg, transform.contrast[g])
        if transform.low_resolution[g] is not None:
            x[..., g] = _low_resolution(group, transform.low_resolution[g], len(spatial))
        if transform.inverted_gamma[g] is not None:
            _gamma(group, fg, transform.inverted_gamma[g], invert=True)
        if transform.gamma[g] is not None:
            _gamma(group, fg, transform.gamma[g], invert=False)
    x[~head] = 0.0
    return _clip(out)


def _groups(image: np.ndarray, groups: int | None) -> int:
    channels = image.shape[-1] if image.ndim >= 2 else 0
    groups = channels if groups is None else int(groups)
    if image.ndim < 2 or groups < 1 or channels % groups:
        raise ValueError(f"image {image.shape} is not (*spatial, K) with K a multiple of {groups} channel groups")
    return groups


def _uniform(u: float, lo: float, hi: float) -> float:
    return float(lo + u * (hi - lo))


def _bg_contrast(coin: float, u: float, lo: float, hi: float) -> float:
    """nnU-Net's BGContrast: half the draws below 1 (from [lo, 1)), the others from [max(lo, 1), hi]."""
    if lo < 1.0 and (coin < 0.5 or hi <= 1.0):
        return _uniform(u, lo, min(hi, 1.0))
    return _uniform(u, max(lo, 1.0), hi)


def _stats(group: np.ndarray, fg: np.ndarray) -> tuple[float, float]:
    values = group[fg]
    if values.size == 0:
        return 0.0, 0.0
    return float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))


def _contrast(group: np.ndarray, fg: np.ndarray, factor: float) -> None:
    values = group[fg]
    if values.size == 0:
        return
    mean = values.mean(dtype=np.float64)
    lo, hi = values.min(), values.max()
    group[fg] = np.clip((values - mean) * factor + mean, lo, hi)


def _gamma(group: np.ndarray, fg: np.ndarray, gamma: float, invert: bool) -> None:
    values = group[fg].astype(np.float64)
    if values.size == 0:
        return
    if invert:
        values = -values
    mean, std = values.mean(), values.std()
    lo, span = values.min(), np.ptp(values)
    values = ((values - lo) / max(span, _EPS)) ** gamma * span + lo
    values = (values - values.mean()) * (std / max(values.std(), _EPS)) + mean
    group[fg] = -values if invert else values


def _low_resolution(group: np.ndarray, zoom: float, rank: int) -> np.ndarray:
    """Nearest-neighbour ("nearest-exact") down to round(size · zoom) per spatial axis, then back up
    to the size with linear interpolation at pixel centres (PyTorch's align_corners=False)."""
    out = group
    for axis in range(rank):
        size = group.shape[axis]
        small = max(1, int(round(size * zoom)))
        if small == size:
            continue
        nearest = np.minimum(((np.arange(small) + 0.5) * (size / small)).astype(np.int64), size - 1)
        out = np.take(out, nearest, axis=axis)
        source = np.maximum((np.arange(size) + 0.5) * (small / size) - 0.5, 0.0)
        first = np.minimum(np.floor(source).astype(np.int64), small - 1)
        second = np.minimum(first + 1, small - 1)
        weight = (source - first).astype(np.float32).reshape((-1,) + (1,) * (out.ndim - axis - 1))
        a, b = np.take(out, first, axis=axis), np.take(out, second, axis=axis)
        out = a + (b - a) * weight
    return out


def _clip(image: np.ndarray) -> np.ndarray:
    # Inference inputs are on 0..255 (uint8 stores, or float stores of 0..255 values): clip so the
    # model trains only on values it can be shown; above 255 a brighter scan saturates, as conversion does.
    return np.clip(image, *VALUE_RANGE, out=image)

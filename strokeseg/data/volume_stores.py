"""Per-subject volume stores for the 3-D training path: whole volumes on the plan grid, memory-mapped.

The 2-D path cuts every volume into slices (:mod:`strokeseg.data.stores`); the 3-D path samples
patches from whole volumes (:mod:`strokeseg.train.patches`), so it stores the volumes themselves.
Every subject of a store shares the plan grid's shape (X, Y, Z), so one folder holds

- ``images.npy``     (n_subjects, M, X, Y, Z) in the store dtype (e.g. uint8 on the 0..255 scale),
  already normalised by the caller; each channel of a subject is one contiguous block;
- ``masks.npy``      (n_subjects, X, Y, Z) uint8 {0, 1}. Not bit-packed as the slice stores' masks
  are: a patch starts at any z, and unpacking misaligned bytes per read would cost more than the
  8x disk it saves (one mask is as large as one uint8 image channel);
- ``foreground.npy`` (K, 3) lesion-voxel coordinates (int16 while every axis is < 32768, else
  int32), the subjects' lists one after the other: at most ``max_foreground`` per subject, all of
  a subject's lesion voxels when it has no more, else a reproducible draw without replacement
  (seeded by the store seed and the subject's name, so a subject gets the same list whatever its
  position). The patch sampler centres foreground patches on these voxels, as nnU-Net centres on
  its precomputed ``class_locations`` (also capped at 10,000 per class);
- ``index.csv``      subject_name, position, lesion_voxels (all of them, not the capped count),
  foreground_start, foreground_count (the subject's rows in ``foreground.npy``);
- ``geometry.json``  shape, channels, dtype, n_subjects, max_foreground, the foreground seed and
  whatever the caller adds (spacing, affine, normalisation). It is written last, so a store whose
  writing was interrupted has no geometry and the reader refuses it.

Nothing holds the cohort in RAM: subjects are written one at a time into memory maps created
zero-filled by ``np.lib.format.open_memmap``, and :class:`VolumeStore` maps the arrays afresh for
every read and drops them after it (as :class:`strokeseg.data.stores.SliceStore` does), so the
pages a long run touches do not pile up in its resident memory.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import ConvertConfig, derive_seed
from strokeseg.data import normalization
from strokeseg.data.grid_plan import GridPlan
from strokeseg.data.planned import channel_paths, load_planned
from strokeseg.errors import InputError
from strokeseg.parallel import map_ordered
from strokeseg.workdir import read_csv, write_csv

IMAGES, MASKS, FOREGROUND, INDEX, GEOMETRY = (
    "images.npy", "masks.npy", "foreground.npy", "index.csv", "geometry.json")
MAX_FOREGROUND = 10_000   # nnU-Net's cap on stored foreground locations per class and case
INDEX_COLUMNS = ("subject_name", "position", "lesion_voxels", "foreground_start", "foreground_count")

Subject = tuple[str, np.ndarray, np.ndarray]   # (name, images (M, X, Y, Z), mask (X, Y, Z))


# Writing --------------------------------------------------------------------------------------------
def write_volume_store(folder: Path, subjects: Iterable[Subject], n_subjects: int | None = None, *,
                       channels: Iterable[str] | None = None, max_foreground: int = MAX_FOREGROUND,
                       seed: int = 0, extra_geometry: dict | None = None) -> pd.DataFrame:
    """Write one volume store into ``folder`` (created if needed; must not hold a store yet).

    ``subjects`` yields (subject_name, images (M, X, Y, Z) in the store dtype, mask (X, Y, Z) {0, 1}),
    in store order; it may be a generator (one subject in memory at a time), in which case
    ``n_subjects`` is required because the memory maps are sized before the first write. The shape,
    M and the dtype are taken from the first subject and every other must match. Returns the index.
    """
    folder = Path(folder)
    if n_subjects is None:
        if not hasattr(subjects, "__len__"):
            raise InputError(folder, "n_subjects is required when subjects is not a sized collection")
        n_subjects = len(subjects)  # type: ignore[arg-type]
    stream = iter(subjects)
    first = next(stream, None)
    if first is None or n_subjects < 1:
        raise InputError(folder, "no subjects to write")
    name, images, mask = _checked(folder, first, None)
    modalities, shape, dtype = images.shape[0], images.shape[1:], images.dtype
    channel_names = [f"channel{m}" for m in range(modalities)] if channels is None else list(channels)
    if len(channel_names) != modalities:
        raise InputError(folder, f"{len(channel_names)} channel names for {modalities} image channels")
    if max_foreground < 0:
        raise InputError(folder, f"max_foreground must be >= 0, not {max_foreground}")

    _create_arrays(folder, n_subjects, modalities, shape, dtype)

    coordinate_dtype = np.int16 if max(shape) <= np.iinfo(np.int16).max else np.int32
    rows, lists, start, position = [], [], 0, 0
    del first   # only the current subject's arrays stay referenced
    while True:
        _write_subject(folder, position, images, mask)
        voxels = capped_foreground(mask, max_foreground, derive_seed(seed, "foreground", name))
        lists.append(voxels.astype(coordinate_dtype))
        rows.append((name, position, int(np.count_nonzero(mask)), start, len(voxels)))
        start += len(voxels)
        del images, mask
        subject = next(stream, None)
        if subject is None:
            break
        position += 1
        if position >= n_subjects:
            raise InputError(folder, f"more subjects than n_subjects={n_subjects}")
        name, images, mask = _checked(folder, subject, (modalities, shape, dtype))
        del subject
    if len(rows) != n_subjects:
        raise InputError(folder, f"{len(rows)} subjects written, n_subjects={n_subjects}")
    if len({r[0] for r in rows}) != len(rows):
        raise InputError(folder, "subject names are not unique")

    np.save(folder / FOREGROUND, np.concatenate(lists) if start else np.zeros((0, 3), coordinate_dtype))
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    write_csv(index, folder / INDEX)
    geometry = {**(extra_geometry or {}),
                "shape": [int(s) for s in shape], "channels": channel_names, "dtype": np.dtype(dtype).name,
                "n_subjects": n_subjects, "max_foreground": max_foreground, "foreground_seed": seed,
                "foreground_dtype": np.dtype(coordinate_dtype).name, "layout": "subject_channel_x_y_z"}
    (folder / GEOMETRY).write_text(json.dumps(geometry, indent=2, sort_keys=True) + "\n")  # last: marks complete
    return index


@dataclass(frozen=True)
class _Read:
    name: str
    channels: tuple[tuple[str, str], ...]
    mask: str
    plan: GridPlan
    convert: ConvertConfig
    binarize: bool
    allow_empty: bool


def _normalised_subject(job: _Read) -> Subject:
    """One subject on its plan grid, each channel normalised by its kind exactly as the slice stores
    normalise it (worker side)."""
    subject = load_planned([(c, Path(p)) for c, p in job.channels], Path(job.mask), job.plan, job.binarize,
                           job.allow_empty)
    affine = job.plan.subject_affine(subject.native)      # as the slice stores and inference pass it
    images = np.stack([normalization.channel_volume(image, kind, job.convert, affine)
                       for image, kind in zip(subject.images, job.plan.channel_kinds)])
    return job.name, images, subject.mask


def write_cohort_store(folder: Path, subjects: pd.DataFrame, plan: GridPlan, convert: ConvertConfig,
                       binarize: bool, allow_empty: bool, seed: int, workers: int = 1,
                       progress: bool = True) -> pd.DataFrame:
    """The volume store of ``subjects`` (cohort.csv rows, in store order) on the plan grid, normalised
    per volume as stage 03's slice stores are; subjects are read by ``workers`` processes and written
    one at a time. Upstream's per-slice maximum has no per-volume form, so it is refused."""
    if convert.normalization == "slice_max" and "t1" in plan.channel_kinds:
        raise InputError(folder, "3-D models need a per-volume normalisation: convert.normalization=slice_max "
                                 "has none; use volume_robust")
    jobs = [_Read(str(r.subject_name), tuple((c, str(p)) for c, p in channel_paths(r, plan.channels)), str(r.mask),
                  plan, convert, binarize, allow_empty)
            for r in subjects.itertuples(index=False)]
    geometry = {"grid_plan": plan.kind, "spacing": list(plan.spacing), "spacing_known": plan.spacing_known,
                "channel_kinds": list(plan.channel_kinds), "normalization": convert.normalization,
                "robust_percentiles": list(convert.robust_percentiles), "head_region": convert.head_region,
                "ct_window": list(convert.ct_window)}
    return write_volume_store(folder, map_ordered(_normalised_subject, jobs, workers, "03 volumes", progress),
                              len(jobs), channels=plan.channels, seed=seed, extra_geometry=geometry)


def _create_arrays(folder: Path, n_subjects: int, modalities: int, shape: tuple[int, ...], dtype) -> None:
    """Zero-filled memory maps of the whole store (sparse on disk until written)."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [n for n in (IMAGES, MASKS, FOREGROUND, INDEX, GEOMETRY) if (folder / n).exists()]
    if taken:
        raise InputError(folder, f"already holds a store ({', '.join(taken)})")
    np.lib.format.open_memmap(folder / IMAGES, mode="w+", dtype=dtype, shape=(n_subjects, modalities, *shape))
    np.lib.format.open_memmap(folder / MASKS, mode="w+", dtype=np.uint8, shape=(n_subjects, *shape))


def _checked(folder: Path, subject: Subject, expected: tuple | None) -> Subject:
    """The subject's arrays, validated against the store's (M, shape, dtype) once the first set it."""
    name, images, mask = subject
    images, mask = np.asarray(images), np.asarray(mask)
    if images.ndim != 4 or mask.ndim != 3 or images.shape[1:] != mask.shape:
        raise InputError(folder, f"subject {name}: images {images.shape} and mask {mask.shape} are not "
                                 "(M, X, Y, Z) and (X, Y, Z)")
    if expected is not None and (images.shape[0], images.shape[1:], images.dtype) != expected:
        raise InputError(folder, f"subject {name}: images {images.shape} {images.dtype} differ from the store's "
                                 f"({expected[0]}, {', '.join(map(str, expected[1]))}) {expected[2]}")
    # A label map or a soft mask would be stored as lesion silently: refuse it instead.
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise InputError(folder, f"subject {name}: the mask is not binary (values {mask.min()}..{mask.max()})")
    return str(name), images, mask


def _write_subject(folder: Path, position: int, images: np.ndarray, mask: np.ndarray) -> None:
    # Mapped per subject and dropped after it, so written pages leave this process's resident set.
    images_mm = np.load(folder / IMAGES, mmap_mode="r+")
    masks_mm = np.load(folder / MASKS, mmap_mode="r+")
    images_mm[position] = images
    masks_mm[position] = mask
    images_mm.flush()
    masks_mm.flush()
    del images_mm, masks_mm


def capped_foreground(mask: np.ndarray, max_foreground: int, seed: int) -> np.ndarray:
    """(k, 3) int64 coordinates of the mask's nonzero voxels, C order, at most ``max_foreground``:
    a uniform draw without replacement (kept in C order) when there are more."""
    voxels = np.argwhere(mask)
    if len(voxels) <= max_foreground:
        return voxels
    chosen = np.random.default_rng(seed).choice(len(voxels), size=max_foreground, replace=False)
    return voxels[np.sort(chosen)]


# Reading --------------------------------------------------------------------------------------------
class VolumeStore:
    """Read access to one volume store: patches and foreground lists by subject position.

    The arrays are memory-mapped afresh for every read and unmapped after it; the object itself
    holds only the geometry and the index, so it pickles cheaply into tf.data or worker processes.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / GEOMETRY
        try:
            self.geometry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(path, f"missing or unreadable volume store geometry ({exc})") from exc
        self.shape: tuple[int, int, int] = tuple(int(s) for s in self.geometry["shape"])
        self.channels: tuple[str, ...] = tuple(self.geometry["channels"])
        self.dtype = np.dtype(self.geometry["dtype"])
        self.index = read_csv(self.folder / INDEX)
        missing = set(INDEX_COLUMNS) - set(self.index.columns)
        if missing or len(self.index) != self.geometry["n_subjects"]:
            raise InputError(self.folder / INDEX, f"does not match geometry.json (missing columns {sorted(missing)})")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def subject_names(self) -> list[str]:
        return self.index["subject_name"].astype(str).tolist()

    def position(self, subject_name: str) -> int:
        hits = np.flatnonzero(self.index["subject_name"].astype(str).to_numpy() == subject_name)
        if not len(hits):
            raise InputError(self.folder, f"subject {subject_name} is not in this store")
        return int(hits[0])

    def _map(self, name: str) -> np.ndarray:
        try:
            return np.load(self.folder / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(self.folder / name, f"missing or unreadable store array ({exc})") from exc

    def _check_position(self, position: int) -> int:
        position = int(position)
        if not 0 <= position < len(self):
            raise InputError(self.folder, f"subject position {position} outside 0..{len(self) - 1}")
        return position

    def patch(self, position: int, corner, size) -> tuple[np.ndarray, np.ndarray]:
        """(images (d, h, w, M) float32, mask (d, h, w) uint8) of the box [corner, corner + size) along
        (X, Y, Z); ``corner`` may be negative or the box may pass the far edge: what lies outside the
        volume is 0 (images and mask), as nnU-Net pads images and segmentation with 0 for training."""
        position = self._check_position(position)
        corner, size = _triple(corner, "corner"), _triple(size, "size")
        if min(size) < 1:
            raise InputError(self.folder, f"patch size {size} must be positive")
        images = np.zeros((*size, len(self.channels)), dtype=np.float32)
        mask = np.zeros(size, dtype=np.uint8)
        source, target = _overlap(corner, size, self.shape)
        if source is None:
            return images, mask
        # One read per array: the channels of a subject are adjacent, so the box is M strided blocks.
        block = self._map(IMAGES)[(position, slice(None), *source)]
        images[target] = np.moveaxis(block, 0, -1)
        mask[target] = self._map(MASKS)[(position, *source)]
        return images, mask

    def foreground(self, position: int) -> np.ndarray:
        """(k, 3) int64 lesion-voxel coordinates of the subject (k = 0 without lesion), capped at
        ``max_foreground``; a copy, so no memory map outlives the call."""
        row = self.index.iloc[self._check_position(position)]
        start, count = int(row["foreground_start"]), int(row["foreground_count"])
        return np.array(self._map(FOREGROUND)[start:start + count], dtype=np.int64).reshape(count, 3)

    def lesion_voxels(self, position: int) -> int:
        """All lesion voxels of the subject (not capped)."""
        return int(self.index.iloc[self._check_position(position)]["lesion_voxels"])

    def volume(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole subject: (images (M, X, Y, Z) in the store dtype, mask (X, Y, Z) uint8), copies."""
        position = self._check_position(position)
        return np.array(self._map(IMAGES)[position]), np.array(self._map(MASKS)[position])


def _triple(values, what: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in np.ravel(values))
    if len(values) != 3:
        raise ValueError(f"{what} needs 3 values (X, Y, Z), got {values}")
    return values  # type: ignore[return-value]


def _overlap(corner: tuple[int, int, int], size: tuple[int, int, int],
             shape: tuple[int, int, int]) -> tuple[tuple[slice, ...] | None, tuple[slice, ...] | None]:
    """Slices of the volume (source) and of the patch (target) where the box meets the volume;
    (None, None) when it misses the volume entirely. Never negative indices: they would wrap."""
    source, target = [], []
    for c, p, s in zip(corner, size, shape):
        lo, hi = max(c, 0), min(c + p, s)
        if hi <= lo:
            return None, None
        source.append(slice(lo, hi))
        target.append(slice(lo - c, hi - c))
    return tuple(source), tuple(target)

"""Per-plane slice stores: every slice of every training subject, in the plane's canvas, memory-mapped.

Subjects are read onto their plan grid (:mod:`strokeseg.data.grid_plan`: as they are on ATLAS's
one grid). One folder per plane of the study holds
- ``images.npy``  (n_subjects * n_slices, H, W), the normalised image on the 0..255 scale (store
  dtype); with M image channels (DWI, ADC, …) (n_subjects * n_slices, M, H, W), each channel
  normalised per volume by its kind (:func:`strokeseg.data.normalization.channel_volume`);
- ``masks.npy``   (n_subjects * n_slices, H, ceil(W / 8)) uint8: the binary masks bit-packed along
  the last axis (np.packbits), 8x smaller on disk, unpacked on read;
- ``index.csv``   subject_name, slice, row, lesion_pixels, brain_pixels;
- ``geometry.json`` the canvas (shape and offsets), the plan grid (shape, voxel size, affine of a
  fixed plan), the channels and their kinds, normalisation.
A subject's slices occupy consecutive rows in slice order (row = subject_position * n_slices +
slice), so adjacent slices for multi-channel inputs are plain row arithmetic. Nothing is written
one file per slice (upstream wrote ~619 NIfTI files per subject, §14.10), and nothing is held in
RAM: volumes are streamed one at a time, and readers memory-map.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import PLANES, ConvertConfig
from strokeseg.data import normalization, planes
from strokeseg.data.brain import brain_pixels_per_slice
from strokeseg.data.grid_plan import GridPlan
from strokeseg.data.lesions import lesion_pixels_per_slice
from strokeseg.data.planned import load_planned
from strokeseg.errors import InputError
from strokeseg.parallel import map_ordered
from strokeseg.workdir import read_csv, write_csv

IMAGES, MASKS, INDEX, GEOMETRY = "images.npy", "masks.npy", "index.csv", "geometry.json"


@dataclass(frozen=True)
class _Job:
    position: int
    name: str
    channels: tuple[tuple[str, str], ...]
    mask: str
    folder: str
    plan: GridPlan
    convert: ConvertConfig
    binarize: bool
    allow_empty: bool


def write_stores(folder: Path, subjects: pd.DataFrame, plan: GridPlan, convert: ConvertConfig, binarize: bool,
                 workers: int, progress: bool = True, allow_empty: bool = False) -> dict[str, int]:
    """Write one store per plane of the plan under ``folder``; returns the number of rows per plane.

    ``subjects``: cohort.csv rows (subject_name, one column per channel, mask), in store order."""
    if subjects.empty:
        raise InputError(folder, "no subjects to convert")
    if len(plan.channels) > 1 and convert.normalization == "slice_max" and "t1" in plan.channel_kinds:
        raise InputError(folder, "convert.normalization=slice_max is for single-channel T1 cohorts")
    modalities = len(plan.channels)
    for plane in plan.planes:
        canvas = planes.canvas_for(plan.shape, plane, convert.canvas_multiple)
        rows = len(subjects) * planes.n_slices(plan.shape, plane)
        plane_dir = folder / plane
        plane_dir.mkdir(parents=True)
        # One channel: (rows, H, W) as ever; several: (rows, M, H, W), each channel's slice contiguous.
        image_shape = (rows,) + ((modalities,) if modalities > 1 else ()) + canvas.shape
        np.lib.format.open_memmap(plane_dir / IMAGES, mode="w+", dtype=convert.store_dtype, shape=image_shape)
        np.lib.format.open_memmap(plane_dir / MASKS, mode="w+", dtype=np.uint8,
                                  shape=(rows, canvas.shape[0], _packed_width(canvas.shape[1])))
        geometry = {"canvas": canvas.to_dict(), "volume_shape": list(plan.shape),
                    "affine": None if plan.affine is None else np.reshape(plan.affine, (4, 4)).tolist(),
                    "grid_plan": plan.kind, "spacing": list(plan.spacing), "spacing_known": plan.spacing_known,
                    "channels": list(plan.channels),
                    "channel_kinds": list(plan.channel_kinds), "n_subjects": len(subjects),
                    "normalization": convert.normalization,
                    "robust_percentiles": list(convert.robust_percentiles), "head_region": convert.head_region,
                    "ct_window": list(convert.ct_window),
                    "store_dtype": convert.store_dtype, "mask_packing": "packbits_last_axis"}
        (plane_dir / GEOMETRY).write_text(json.dumps(geometry, indent=2, sort_keys=True) + "\n")

    jobs = [_Job(i, str(r.subject_name), tuple((c, str(getattr(r, c))) for c in plan.channels), str(r.mask),
                 str(folder), plan, convert, binarize, allow_empty)
            for i, r in enumerate(subjects.itertuples(index=False))]
    tables: dict[str, list[pd.DataFrame]] = {p: [] for p in plan.planes}
    for per_plane in map_ordered(_convert_subject, jobs, workers, "03 convert", progress):
        for plane, table in per_plane.items():
            tables[plane].append(table)
    counts = {}
    for plane in plan.planes:
        index = pd.concat(tables[plane], ignore_index=True)
        write_csv(index, folder / plane / INDEX)
        counts[plane] = len(index)
    return counts


def _convert_subject(job: _Job) -> dict[str, pd.DataFrame]:
    """Read one subject onto its plan grid, normalise, and write its rows into the stores (worker side).

    The memory maps are created zero-filled, so only each slice's region of the canvas is written.
    """
    plan = job.plan
    subject = load_planned([(c, Path(p)) for c, p in job.channels], Path(job.mask), plan, job.binarize,
                           job.allow_empty)
    dtype = job.convert.store_dtype
    # One normalised volume per channel, shared by the planes (None: T1 slice_max, per slice below);
    # the plan grid's affine is what inference passes too (convert.head_region's MNI-grid test).
    affine = plan.subject_affine(subject.native)
    normalised = [normalization.channel_volume(image, kind, job.convert, affine)
                  for image, kind in zip(subject.images, plan.channel_kinds)]
    several = len(normalised) > 1
    brain = brain_pixels_per_slice(subject.images[0], affine, plan.planes)
    out = {}
    for plane in plan.planes:
        plane_dir = Path(job.folder) / plane
        canvas = planes.canvas_for(plan.shape, plane, job.convert.canvas_multiple)  # as write_stores made it
        count = planes.n_slices(plan.shape, plane)
        start = job.position * count
        rows, cols = canvas.region
        images_mm = np.load(plane_dir / IMAGES, mmap_mode="r+")
        for m, volume in enumerate(normalised):
            if volume is not None:
                stack = planes.to_stack(volume, plane)
            else:
                stack = normalization.to_store_dtype(
                    normalization.slice_max(planes.to_stack(subject.images[m], plane)), dtype)
            # Empty slices (outside a skull-stripped head) stay as created: their pages are never
            # dirtied, which spares ~20 % of the writes on such cohorts.
            filled = np.flatnonzero(np.any(stack, axis=(1, 2)))
            if several:
                images_mm[start + filled, m, rows, cols] = stack[filled]
            else:
                images_mm[start + filled, rows, cols] = stack[filled]
        lesion_pixels = lesion_pixels_per_slice(subject.mask, plane)
        with_lesion = np.flatnonzero(lesion_pixels)   # other mask rows stay zero as created
        masks_mm = np.load(plane_dir / MASKS, mmap_mode="r+")
        masks_mm[start + with_lesion] = np.packbits(
            canvas.pad(planes.to_stack(subject.mask, plane)[with_lesion]), axis=-1)
        del images_mm, masks_mm  # unmapped; the page cache carries the writes to disk
        out[plane] = pd.DataFrame({
            "subject_name": job.name,
            "slice": np.arange(count),
            "row": start + np.arange(count),
            "lesion_pixels": lesion_pixels,
            "brain_pixels": brain[plane],
        })
    return out


def _packed_width(width: int) -> int:
    return -(-width // 8)


@dataclass(frozen=True)
class StoreGeometry:
    canvas: planes.Canvas
    volume_shape: tuple[int, int, int]
    raw: dict

    @classmethod
    def read(cls, folder: Path) -> "StoreGeometry":
        path = Path(folder) / GEOMETRY
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(path, f"missing or unreadable store geometry ({exc})") from exc
        return cls(planes.Canvas.from_dict(raw["canvas"]), tuple(raw["volume_shape"]), raw)


def store_geometry(folder: Path, plane: str) -> StoreGeometry:
    return StoreGeometry.read(Path(folder) / plane)


class SliceStore:
    """Read access to one plane's store.

    The arrays are memory-mapped afresh for every read and unmapped after it, so the pages a long
    run touches do not pile up in its resident memory whatever the cohort size.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.geometry = StoreGeometry.read(self.folder)
        self.canvas = self.geometry.canvas
        self.plane = self.canvas.plane
        self.n_slices = planes.n_slices(self.geometry.volume_shape, self.plane)
        self.index = read_csv(self.folder / INDEX)
        self.dtype = self._map(IMAGES).dtype
        self.modalities = tuple(self.geometry.raw.get("channels", ["t1w"]))   # image channels per slice
        self._start = self.index.groupby("subject_name", sort=False)["row"].min().to_dict()

    def _map(self, name: str) -> np.ndarray:
        try:
            return np.load(self.folder / name, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(self.folder / name, f"missing or unreadable store array ({exc})") from exc

    def rows(self, subjects, slices) -> np.ndarray:
        """Store rows of (subject, slice) pairs."""
        try:
            starts = np.array([self._start[s] for s in subjects], dtype=np.int64)
        except KeyError as exc:
            raise InputError(self.folder, f"subject {exc.args[0]} is not in this store") from exc
        slices = np.asarray(slices, dtype=np.int64)
        if np.any((slices < 0) | (slices >= self.n_slices)):
            raise InputError(self.folder, f"slice index outside 0..{self.n_slices - 1}")
        return starts + slices

    def images_at(self, rows: np.ndarray, channels: int = 1) -> np.ndarray:
        """(n, H, W, C x M) images of C adjacent slices and M image channels: input channel
        c * M + m holds image channel m of the slice at offset c - (C-1)//2 within the subject."""
        rows = np.asarray(rows, dtype=np.int64)
        slice_index = rows % self.n_slices
        wanted = (rows - slice_index)[:, None] + planes.neighbour_indices(slice_index, self.n_slices, channels)
        gathered = self._map(IMAGES)[wanted.ravel()]
        m = len(self.modalities)
        if m == 1:
            return gathered.reshape(len(rows), channels, *self.canvas.shape).transpose(0, 2, 3, 1)
        gathered = gathered.reshape(len(rows), channels, m, *self.canvas.shape)
        return gathered.transpose(0, 3, 4, 1, 2).reshape(len(rows), *self.canvas.shape, channels * m)

    def masks_at(self, rows: np.ndarray) -> np.ndarray:
        """(n, H, W) uint8 {0, 1} masks."""
        packed = self._map(MASKS)[np.asarray(rows, dtype=np.int64)]
        return np.unpackbits(packed, axis=-1, count=self.canvas.shape[1])


def open_stores(folder: Path) -> dict[str, SliceStore]:
    """The stores of every plane stage 03 wrote (the study's planes)."""
    return {plane: SliceStore(Path(folder) / plane) for plane in PLANES if (Path(folder) / plane).is_dir()}


def store_index(folder: Path, plane: str) -> pd.DataFrame:
    """The per-slice index of one plane's store without opening the arrays."""
    return read_csv(Path(folder) / plane / INDEX)


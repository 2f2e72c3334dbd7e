"""Stage 01: the cohort, its grid plan and its lesion statistics.

Reads the dataset with the reader of ``dataset.source`` (:mod:`strokeseg.data.readers`: ATLAS v2.0,
ISLES'22, nnU-Net raw, PNG or kaggle_3m slice folders) or builds a synthetic cohort (ATLAS-like T1,
or ISLES-like DWI + ADC), writes the volumes of layouts that are not NIfTI on one grid
(``volumes/``), validates every subject (channels and mask on one grid, finite, non-constant,
binary mask), makes the grid plan (``grid_plan.json``, :mod:`strokeseg.data.grid_plan`), and writes
``cohort.csv`` (subject, group, site, one file column per channel, mask, native shape, spacing,
orientation), ``lesion_information_3d.csv`` (26-connected components on the plan grid;
``lesion_size_1..10`` the ten largest; ``volume_ml`` on the subject's own grid), one
``lesion_information_<plane>.csv`` per plane of the study (lesion slices on the plan grid,
8-connectivity) and distribution figures.

Where every subject is in MNI space (:func:`strokeseg.data.region_atlas.mni_reason`; ATLAS and the
synthetic cohort) and ``dataset.lesion_locations`` is on, it also locates every lesion on the
subject's own grid (:mod:`strokeseg.data.lesion_locations`, the atlas built once per grid and kept in
``<workdir>/atlas_cache``): ``lesion_locations.csv`` (per lesion; for a synthetic cohort with the
territory the generator placed it in, and whether the atlas agrees), ``subject_locations.csv`` (per
subject), ``lesion_load_by_region.csv`` (per subject x region), and, where the subjects share one
grid, ``lesion_frequency.nii.gz`` (share of subjects with a lesion at each voxel) and the two location
figures. Other cohorts (native space: ISLES'22, slice folders) skip them with one logged line.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import Config, restrict_planes
from strokeseg.contracts import (
    ATLAS_CACHE_DIR,
    COHORT_CSV,
    DATASET,
    LESION_FREQUENCY_NII,
    LESION_LOAD_CSV,
    LESION_LOCATIONS_CSV,
    SUBJECT_LOCATIONS_CSV,
    SUBJECTS_3D_CSV,
    VOLUMES_DIR,
    plane_lesions_csv,
)
from strokeseg.data import lesion_locations, lesions, readers, region_atlas, synthetic, synthetic_multimodal
from strokeseg.data.grid_plan import GridPlan, NativeGrid, make_plan, native_grid
from strokeseg.data.nifti import write_nifti
from strokeseg.data.planned import load_planned
from strokeseg.data.subjects import Cohort, Subject
from strokeseg.errors import InputError
from strokeseg.parallel import beside, map_ordered
from strokeseg.protocol import bins
from strokeseg.report import figures
from strokeseg.scratch import folder_prefix, remove_leftovers
from strokeseg.workdir import StageWriter, stage_dir, write_csv

log = logging.getLogger(__name__)
STAGE = DATASET
SYNTHETIC_DIRS = {"synthetic": "synthetic_cohort", "synthetic_multimodal": "synthetic_multimodal_cohort"}
SYNTHETIC_READERS = {"synthetic": "atlas", "synthetic_multimodal": "isles22"}


@dataclass(frozen=True)
class _Job:
    subject: Subject
    plan: GridPlan
    binarize: bool
    allow_empty: bool
    atlas_cache: Path | None = None    # locate the lesions with the region atlas kept here
    crop_mask: bool = False            # return the mask's bounding box (for the frequency map)


@dataclass
class _Location:
    """One subject's located lesions, as a worker returns them."""
    lesions: pd.DataFrame
    subject: dict
    load: pd.DataFrame
    crop: tuple[tuple[int, int, int], np.ndarray] | None   # (start, uint8 box) of the mask, None if empty


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    cohort = read_cohort(workdir, config, progress)
    is_synthetic = config.synthetic or any(synthetic.is_synthetic(p) for p in (cohort.root, *cohort.root.parents))
    log.info("01: %d %s subjects (channels %s) in %s%s", len(cohort.subjects), cohort.kind,
             ", ".join(cohort.channels), cohort.root, " (SYNTHETIC)" if is_synthetic else "")
    for note in cohort.notes:
        log.info("01: %s", note)
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic) as out:
        subjects, recorded = _materialised(cohort, out.path, stage_dir(workdir, STAGE), config, progress)
        natives = [_native_grid(s) for s in subjects]
        plan = make_plan(natives, config.dataset.grid_plan, cohort.channels,
                         cohort.channel_kinds, cohort.planes, cohort.spacing_known, config.dataset.target_spacing)
        log.info("01: grid plan %s: %s voxels of %s", plan.kind, "x".join(map(str, plan.shape)),
                 " x ".join(f"{s:.3g}" for s in plan.spacing) + (" mm" if plan.spacing_known else " (unknown units)"))
        plan.write(out.path)
        out.config = restrict_planes(config, plan.planes)   # later stages start from this config
        atlas_cache, grid = _location_setup(workdir, config, subjects, natives)
        jobs = [_Job(s, plan, config.dataset.binarize_masks, cohort.allow_empty_masks, atlas_cache, grid is not None)
                for s in subjects]
        rows, geometry, per_plane, located = [], [], {p: [] for p in plan.planes}, []
        frequency = np.zeros(grid[0], dtype=np.float32) if grid is not None else None   # lesion counts, then shares
        for subject_row, grid_row, slices, location in map_ordered(_statistics, jobs, config.workers,
                                                                    "01 lesion statistics", progress):
            rows.append(subject_row)
            geometry.append(grid_row)
            for plane in plan.planes:
                per_plane[plane].append(slices[plane])
            if location is not None and location.crop is not None:   # added up as they come: never all held
                start, box = location.crop
                frequency[tuple(slice(a, a + n) for a, n in zip(start, box.shape))] += box
                location.crop = None
            located.append(location)
        subjects_frame = pd.DataFrame(rows)
        subjects_frame["volume_bin"] = bins.assign_bins(subjects_frame["sum_voxel"], config.bins.volume_edges)
        write_csv(cohort_frame(recorded, cohort.channels, geometry), out.path / COHORT_CSV)
        write_csv(subjects_frame, out.path / SUBJECTS_3D_CSV)
        # The location outputs are written by another process while this one draws the distributions.
        locations = (beside(_write_locations, out.path, located, grid, frequency, is_synthetic, workers=config.workers)
                     if atlas_cache is not None else nullcontext(None))
        with locations as located_record:
            with_lesion = subjects_frame[subjects_frame["sum_voxel"] > 0]   # a log axis: lesion-free ones are counted
            empty = len(subjects_frame) - len(with_lesion)
            figures.lesion_distribution_figure(
                with_lesion["sum_voxel"], with_lesion["volume_bin"], config.bins.volume_edges,
                f"3-D lesion volume per subject (n={len(with_lesion)}"
                + (f"; {empty} without lesion voxels on the plan grid, not shown)" if empty else ")"),
                "lesion voxels", out.path / "lesion_distribution_3d.png", is_synthetic)
            for plane in plan.planes:
                frame = pd.concat(per_plane[plane], ignore_index=True)
                frame["slice_bin"] = bins.assign_bins(frame["sum_voxel"], config.bins.slice_edges(plane))
                write_csv(frame, out.path / plane_lesions_csv(plane))
                figures.lesion_distribution_figure(
                    frame["sum_voxel"], frame["slice_bin"], config.bins.slice_edges(plane),
                    f"{plane.capitalize()} lesion slices (n={len(frame)})", "lesion pixels per slice",
                    out.path / f"lesion_distribution_{plane}.png", is_synthetic)
            if located_record is not None:
                out.extra["lesion_locations"] = record = located_record()
                if "territory_agreement" in record:
                    log.info("01: the atlas agrees with the territory the generator placed %(agree)d of %(checked)d "
                             "lesions in", record["territory_agreement"])
        out.extra.update({"dataset": cohort.kind, "channels": list(cohort.channels), "planes": list(plan.planes),
                          "grid_plan": plan.kind, "allow_empty_masks": cohort.allow_empty_masks,
                          "notes": list(cohort.notes)})
    return stage_dir(workdir, STAGE)


def read_cohort(workdir: Path, config: Config, progress: bool = True) -> Cohort:
    """The cohort of ``dataset.source``: a synthetic one (generated once) or the reader's."""
    options = readers.ReaderOptions(channels=tuple(config.dataset.channels) or None, label=config.dataset.label,
                                    resample_flair=config.dataset.resample_flair,
                                    spacing=tuple(config.dataset.spacing) or None)
    source = config.dataset.source
    if source in SYNTHETIC_DIRS:
        return readers.read_cohort(ensure_synthetic_cohort(workdir, config, progress), SYNTHETIC_READERS[source],
                                   options)
    return readers.read_cohort(Path(config.dataset.folder), source, options)


def _materialised(cohort: Cohort, staging: Path, final: Path, config: Config,
                  progress: bool) -> tuple[list[Subject], list[Subject]]:
    """(subjects to read now, subjects as cohort.csv records them). Layouts whose files are not NIfTI
    on one grid are written into ``volumes/`` first: read from the staging folder, recorded at the
    published place."""
    if cohort.materialise is None:
        return list(cohort.subjects), list(cohort.subjects)
    folder = staging / VOLUMES_DIR
    folder.mkdir()
    written = list(map_ordered(_Materialise(cohort.materialise, folder), list(cohort.subjects), config.workers,
                               "01 volumes", progress))

    def published(path: Path) -> Path:
        return final / VOLUMES_DIR / Path(path).relative_to(folder) if folder in Path(path).parents else Path(path)

    recorded = [replace(s, channels=tuple((n, published(p)) for n, p in s.channels), mask=published(s.mask))
                for s in written]
    return written, recorded


@dataclass(frozen=True)
class _Materialise:
    write: object
    folder: Path

    def __call__(self, subject: Subject) -> Subject:
        return self.write(subject, self.folder)


def _native_grid(subject: Subject) -> NativeGrid:
    """The subject's grid from its first channel's header (no voxels read)."""
    return native_grid(subject.channels[0][1])


def _location_setup(workdir: Path, config: Config, subjects: list[Subject],
                    natives: list[NativeGrid]) -> tuple[Path | None, tuple[tuple[int, ...], np.ndarray] | None]:
    """(the atlas cache folder, or None when the lesions are not located; the one grid every subject
    shares, or None). Builds the atlas of every grid once, here, so that workers only map it."""
    if not config.dataset.lesion_locations:
        log.info("01: lesion locations off (dataset.lesion_locations=false)")
        return None, None
    grids = {}
    for subject, native in zip(subjects, natives):
        path = subject.channels[0][1]
        reason = region_atlas.mni_reason(path)
        if reason:
            log.info("01: lesion locations skipped: %s: %s", path, reason)
            return None, None
        affine = np.asarray(native.affine, dtype=float)
        grids.setdefault((native.shape, np.round(affine, 4).tobytes()), (native.shape, affine))
    cache = Path(workdir) / ATLAS_CACHE_DIR
    try:
        for shape, affine in grids.values():
            region_atlas.cached(cache, shape, affine)
    except region_atlas.AtlasUnavailable as exc:
        log.warning("01: lesion locations skipped: %s", exc)
        return None, None
    log.info("01: locating lesions with the Harvard-Oxford atlas (%d grid(s); cached in %s)", len(grids), cache)
    return cache, (next(iter(grids.values())) if len(grids) == 1 else None)


def _statistics(job: _Job) -> tuple[dict, dict, dict[str, pd.DataFrame], _Location | None]:
    subject = job.subject
    # Every channel is read and validated; only the mask is needed on the plan grid here.
    planned = load_planned(list(subject.channels), subject.mask, job.plan, job.binarize, job.allow_empty,
                           images=False)
    location = _locate(job, subject, planned.native_mask, planned.image.affine) if job.atlas_cache else None
    if location is not None and planned.mask is planned.native_mask:
        # On its own grid the plan mask is the native one: its lesions were just labelled (26-connected)
        statistics = lesions.size_statistics(location.lesions["voxels"].to_numpy())
    else:
        statistics = lesions.subject_statistics(planned.mask)
    row = {"subject_name": subject.subject, "site": subject.site, **statistics}
    # The lesion volume on the subject's own grid: resampling onto the plan changes voxel counts.
    row["volume_ml"] = (float(planned.native_mask.sum()) * float(np.prod(planned.zooms)) / 1000.0
                        if job.plan.spacing_known else float("nan"))
    row["group"] = subject.group   # the patient: stage 02 keeps its sessions on one side of every split
    grid = {"shape": "x".join(str(s) for s in planned.native.shape),
            "spacing": "x".join(f"{s:.6g}" for s in planned.native.spacing),
            "orientation": planned.native.orientation, "spacing_known": job.plan.spacing_known}
    slices = {}
    for plane in job.plan.planes:
        frame = lesions.slice_statistics(planned.mask, plane)
        frame.insert(0, "subject_name", subject.subject)
        slices[plane] = frame
    return row, grid, slices, location


def _locate(job: _Job, subject: Subject, mask: np.ndarray, affine: np.ndarray) -> _Location:
    atlas = region_atlas.cached(job.atlas_cache, mask.shape, affine)
    placed = synthetic.placed_lesions(subject.mask) or []
    found = lesion_locations.locate(mask, affine, atlas, [(p.voxel, p) for p in placed])
    frame = found.lesions
    frame.insert(0, "subject_name", subject.subject)
    if placed:
        ours = [tags[0] if tags else None for tags in found.tags]
        frame["placed_territory"] = [p.territory if p else "" for p in ours]
        frame["placed_side"] = [p.side if p else "" for p in ours]
        frame["territory_agrees"] = [lesion_locations.agrees_with_territory(p.territory, p.side, c, h) if p else None
                                     for p, c, h in zip(ours, frame["location_class"], frame["hemisphere"])]
    load = found.load
    load.insert(0, "subject_name", subject.subject)
    box = found.box if job.crop_mask else None
    return _Location(frame, {"subject_name": subject.subject, **found.whole}, load, box)


def _write_locations(folder: Path, located: list[_Location], grid: tuple[tuple[int, ...], np.ndarray] | None,
                     counts: np.ndarray | None, is_synthetic: bool) -> dict:
    """The location CSVs, the frequency map (from ``counts``: subjects with a lesion per voxel of the
    one ``grid``, when the subjects share one) and the figures; returns what the manifest records."""
    from strokeseg.report import location_figures

    per_lesion = pd.concat([loc.lesions for loc in located], ignore_index=True)
    load = pd.concat([loc.load for loc in located], ignore_index=True)
    write_csv(per_lesion, folder / LESION_LOCATIONS_CSV)
    write_csv(pd.DataFrame([loc.subject for loc in located], columns=list(lesion_locations.SUBJECT_COLUMNS)),
              folder / SUBJECT_LOCATIONS_CSV)
    write_csv(load, folder / LESION_LOAD_CSV)
    location_figures.location_figure(per_lesion, load, folder / "lesion_locations.png", is_synthetic)
    record = {"lesions": int(len(per_lesion)),
              "classes": {c: int((per_lesion["location_class"] == c).sum()) for c in lesion_locations.LOCATION_CLASSES},
              "hemispheres": {h: int((per_lesion["hemisphere"] == h).sum()) for h in lesion_locations.HEMISPHERES}}
    if "territory_agrees" in per_lesion and per_lesion["territory_agrees"].notna().any():
        checked = per_lesion["territory_agrees"].dropna().astype(bool)
        record["territory_agreement"] = {"checked": int(len(checked)), "agree": int(checked.sum())}
    if grid is not None:
        affine = grid[1]
        frequency = counts / np.float32(max(len(located), 1))
        write_nifti(folder / LESION_FREQUENCY_NII, frequency, affine=affine, dtype=np.float32)
        location_figures.frequency_figure(frequency, affine, folder / "lesion_frequency.png", is_synthetic,
                                          len(located))
        record["max_frequency"] = float(frequency.max())
    return record


def cohort_frame(subjects: list[Subject], channels: tuple[str, ...], geometry: list[dict]) -> pd.DataFrame:
    """cohort.csv: subject_name, group, site, one file column per channel, mask, then the geometry."""
    rows = [{"subject_name": s.subject, "group": s.group, "site": s.site,
             **{name: str(path) for name, path in s.channels}, "mask": str(s.mask), **grid}
            for s, grid in zip(subjects, geometry)]
    return pd.DataFrame(rows, columns=["subject_name", "group", "site", *channels, "mask", "shape", "spacing",
                                       "orientation", "spacing_known"])


def ensure_synthetic_cohort(workdir: Path, config: Config, progress: bool = True) -> Path:
    """The synthetic cohort under 01_dataset/, generated atomically unless an identical one exists."""
    multimodal = config.dataset.source == "synthetic_multimodal"
    target = stage_dir(workdir, STAGE) / SYNTHETIC_DIRS[config.dataset.source]
    version = synthetic_multimodal.MULTIMODAL_GENERATOR_VERSION if multimodal else synthetic.GENERATOR_VERSION
    wanted = {"n_subjects": config.dataset.n_subjects, "seed": config.dataset.synthetic_seed,
              "downsample": config.dataset.downsample, "GeneratorVersion": version}
    found = synthetic.cohort_parameters(target) if target.exists() else None
    if found is not None and all(found.get(k) == v for k, v in wanted.items()):
        log.info("01: reusing the synthetic cohort in %s", target)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target.parent)   # a cohort whose generation was killed
        staging = Path(tempfile.mkdtemp(prefix=folder_prefix("cohort-staging"), dir=target.parent))
    except OSError as exc:   # as StageWriter says it: before anything is generated, nothing created
        raise InputError(target.parent, f"workdir is not writable ({exc.strerror or exc})") from None
    try:
        log.info("01: generating a SYNTHETIC cohort of %d subjects in %s", config.dataset.n_subjects, target)
        generate = synthetic_multimodal.generate_multimodal_cohort if multimodal else synthetic.generate_cohort
        generate(staging, config.dataset.n_subjects, config.dataset.synthetic_seed,
                 downsample=config.dataset.downsample, workers=config.workers or os.cpu_count() or 1, progress=progress)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=folder_prefix("cohort-old"), dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

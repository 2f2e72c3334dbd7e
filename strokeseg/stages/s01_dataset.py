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
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from strokeseg.config import Config, restrict_planes
from strokeseg.contracts import COHORT_CSV, DATASET, SUBJECTS_3D_CSV, VOLUMES_DIR, plane_lesions_csv
from strokeseg.data import lesions, readers, synthetic, synthetic_multimodal
from strokeseg.data.grid_plan import GridPlan, NativeGrid, make_plan
from strokeseg.data.planned import load_planned
from strokeseg.data.subjects import Cohort, Subject
from strokeseg.errors import InputError
from strokeseg.parallel import map_ordered
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


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    cohort = read_cohort(workdir, config, progress)
    is_synthetic = config.synthetic or any(synthetic.is_synthetic(p) for p in (cohort.root, *cohort.root.parents))
    log.info("01: %d %s subjects (channels %s) in %s%s", len(cohort.subjects), cohort.kind,
             ", ".join(cohort.channels), cohort.root, " (SYNTHETIC)" if is_synthetic else "")
    for note in cohort.notes:
        log.info("01: %s", note)
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic) as out:
        subjects, recorded = _materialised(cohort, out.path, stage_dir(workdir, STAGE), config, progress)
        plan = make_plan([_native_grid(s) for s in subjects], config.dataset.grid_plan, cohort.channels,
                         cohort.channel_kinds, cohort.planes, cohort.spacing_known, config.dataset.target_spacing)
        log.info("01: grid plan %s: %s voxels of %s", plan.kind, "x".join(map(str, plan.shape)),
                 " x ".join(f"{s:.3g}" for s in plan.spacing) + (" mm" if plan.spacing_known else " (unknown units)"))
        plan.write(out.path)
        out.config = restrict_planes(config, plan.planes)   # later stages start from this config
        jobs = [_Job(s, plan, config.dataset.binarize_masks, cohort.allow_empty_masks) for s in subjects]
        rows, geometry, per_plane = [], [], {p: [] for p in plan.planes}
        for subject_row, grid_row, slices in map_ordered(_statistics, jobs, config.workers, "01 lesion statistics",
                                                          progress):
            rows.append(subject_row)
            geometry.append(grid_row)
            for plane in plan.planes:
                per_plane[plane].append(slices[plane])
        subjects_frame = pd.DataFrame(rows)
        subjects_frame["volume_bin"] = bins.assign_bins(subjects_frame["sum_voxel"], config.bins.volume_edges)
        write_csv(cohort_frame(recorded, cohort.channels, geometry), out.path / COHORT_CSV)
        write_csv(subjects_frame, out.path / SUBJECTS_3D_CSV)
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
    path = subject.channels[0][1]
    try:
        header = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-NIfTI files
        raise InputError(path, f"not a readable NIfTI file ({exc.__class__.__name__})") from None
    return NativeGrid(tuple(int(s) for s in header.shape[:3]), np.asarray(header.affine, dtype=float))


def _statistics(job: _Job) -> tuple[dict, dict, dict[str, pd.DataFrame]]:
    subject = job.subject
    # Every channel is read and validated; only the mask is needed on the plan grid here.
    planned = load_planned(list(subject.channels), subject.mask, job.plan, job.binarize, job.allow_empty,
                           images=False)
    row = {"subject_name": subject.subject, "site": subject.site, **lesions.subject_statistics(planned.mask)}
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
    return row, grid, slices


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

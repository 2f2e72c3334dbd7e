"""Stage 01: the cohort and its lesion statistics.

Reads ATLAS v2.0 (``--atlas-dir``) or builds the synthetic ATLAS-like cohort, validates every
T1/mask pair, and writes: ``cohort.csv`` (subject, site, files), ``lesion_information_3d.csv``
(26-connected components; ``lesion_size_1..10`` the ten largest), one
``lesion_information_<plane>.csv`` per plane (lesion slices, 8-connectivity), and distribution
figures.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.config import PLANES, Config
from strokeseg.contracts import COHORT_CSV, DATASET, SUBJECTS_3D_CSV, plane_lesions_csv
from strokeseg.data import cohort, lesions, synthetic
from strokeseg.data.nifti import load_pair
from strokeseg.data.stores import Grid
from strokeseg.parallel import map_ordered
from strokeseg.protocol import bins
from strokeseg.report import figures
from strokeseg.workdir import StageWriter, stage_dir, write_csv

log = logging.getLogger(__name__)
STAGE = DATASET
SYNTHETIC_DIR = "synthetic_cohort"


@dataclass(frozen=True)
class _Job:
    subject: cohort.SubjectFiles
    binarize: bool
    grid_shape: tuple[int, int, int]
    grid_affine: tuple[float, ...]


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    if config.synthetic:
        dataset_dir = ensure_synthetic_cohort(workdir, config, progress)
    else:
        dataset_dir = Path(config.dataset.atlas_dir).expanduser().resolve()
    subjects = cohort.discover(dataset_dir)
    is_synthetic = config.synthetic or any(synthetic.is_synthetic(p) for p in (dataset_dir, *dataset_dir.parents))
    log.info("01: %d subjects in %s%s", len(subjects), dataset_dir, " (SYNTHETIC)" if is_synthetic else "")
    grid = Grid.of(subjects[0])
    jobs = [_Job(s, config.dataset.binarize_masks, grid.shape, tuple(grid.affine.ravel())) for s in subjects]
    rows, per_plane = [], {p: [] for p in PLANES}
    for subject_row, slices in map_ordered(_statistics, jobs, config.workers, "01 lesion statistics", progress):
        rows.append(subject_row)
        for plane in PLANES:
            per_plane[plane].append(slices[plane])

    subjects_frame = pd.DataFrame(rows)
    subjects_frame["volume_bin"] = bins.assign_bins(subjects_frame["sum_voxel"], config.bins.volume_edges)
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic) as out:
        write_csv(cohort.cohort_frame(subjects), out.path / COHORT_CSV)
        write_csv(subjects_frame, out.path / SUBJECTS_3D_CSV)
        figures.lesion_distribution_figure(
            subjects_frame["sum_voxel"], subjects_frame["volume_bin"], config.bins.volume_edges,
            f"3-D lesion volume per subject (n={len(subjects_frame)})", "lesion voxels",
            out.path / "lesion_distribution_3d.png", is_synthetic)
        for plane in PLANES:
            frame = pd.concat(per_plane[plane], ignore_index=True)
            frame["slice_bin"] = bins.assign_bins(frame["sum_voxel"], config.bins.slice_edges(plane))
            write_csv(frame, out.path / plane_lesions_csv(plane))
            figures.lesion_distribution_figure(
                frame["sum_voxel"], frame["slice_bin"], config.bins.slice_edges(plane),
                f"{plane.capitalize()} lesion slices (n={len(frame)})", "lesion pixels per slice",
                out.path / f"lesion_distribution_{plane}.png", is_synthetic)
    return stage_dir(workdir, STAGE)


def _statistics(job: _Job) -> tuple[dict, dict[str, pd.DataFrame]]:
    volumes = load_pair(job.subject.t1w, job.subject.mask, binarize=job.binarize)
    Grid(job.grid_shape, np.asarray(job.grid_affine).reshape(4, 4)).check(
        job.subject.t1w, volumes.t1.shape, volumes.affine)
    row = {"subject_name": job.subject.subject, "site": job.subject.site,
           **lesions.subject_statistics(volumes.mask)}
    row["volume_ml"] = row["sum_voxel"] * float(np.prod(volumes.zooms)) / 1000.0
    slices = {}
    for plane in PLANES:
        frame = lesions.slice_statistics(volumes.mask, plane)
        frame.insert(0, "subject_name", job.subject.subject)
        slices[plane] = frame
    return row, slices


def ensure_synthetic_cohort(workdir: Path, config: Config, progress: bool = True) -> Path:
    """The synthetic cohort under 01_dataset/, generated atomically unless an identical one exists."""
    target = stage_dir(workdir, STAGE) / SYNTHETIC_DIR
    wanted = {"n_subjects": config.dataset.n_subjects, "seed": config.dataset.synthetic_seed,
              "downsample": config.dataset.downsample, "GeneratorVersion": synthetic.GENERATOR_VERSION}
    found = synthetic.cohort_parameters(target) if target.exists() else None
    if found is not None and all(found.get(k) == v for k, v in wanted.items()):
        log.info("01: reusing the synthetic cohort in %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cohort-staging-", dir=target.parent))
    try:
        log.info("01: generating a SYNTHETIC cohort of %d subjects in %s", config.dataset.n_subjects, target)
        synthetic.generate_cohort(staging, config.dataset.n_subjects, config.dataset.synthetic_seed,
                                  downsample=config.dataset.downsample, workers=config.workers or os.cpu_count() or 1,
                                  progress=progress)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".cohort-old-", dir=target.parent))
            os.replace(target, old / SYNTHETIC_DIR)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""Stage 04: k subject-level folds shared by the three planes, normal slices, balance checks.

Writes ``folds.csv`` (subject_name, volume_bin, fold) — the one assignment every plane uses —
then per plane ``<plane>/fold_<k>_lesion.csv`` (the fold subjects' lesion slices) and
``<plane>/fold_<k>_normal.csv`` (lesion-free, brain-containing slices of the same subjects, 1:1
per subject; with a pool kind of ``batches.kind``, ``foreground_weighted`` or ``every_slice``, every
such slice: the pool an epoch is drawn from), and
``balance_tests.csv`` (Mann-Whitney U fold vs rest and upstream's fold vs pool
on ``sum_voxel``, chi-squared on bin counts; 3-D and per plane), each with its textbook p-value and
a subject-level permutation p-value (slices of one subject are not independent; see
strokeseg.protocol.balance), drawn in ``balance_tests.png`` and ``balance_tests_subject_permutation.png``.
With ``cv.edge_slices`` = k the first and last k slices of each subject's stack are neither lesion
nor normal slices (and are left out of the per-plane balance tests with them).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from strokeseg.config import POOL_BATCH_KINDS, Config, derive_seed
from strokeseg.contracts import (
    COHORT_CSV,
    CONVERT,
    CROSS_VALIDATION,
    DATASET,
    FOLDS_CSV,
    SPLITTING,
    TRAIN_SUBJECTS_CSV,
    lesion_slices_csv,
    normal_slices_csv,
    plane_lesions_80_csv,
)
from strokeseg.data.grid_plan import native_grid
from strokeseg.data.planes import AXIS as PLANE_AXIS
from strokeseg.data.stores import store_geometry, store_index
from strokeseg.errors import StrokesegError
from strokeseg.protocol.balance import PERMUTATION_COLUMN, fold_balance_tests
from strokeseg.protocol.splits import normal_candidates, select_normal_slices, subject_folds, without_edge_slices
from strokeseg.report import figures
from strokeseg.workdir import (
    StageWriter,
    grid_plan,
    is_synthetic_run,
    read_csv,
    require_stage,
    stage_dir,
    study_planes,
    write_csv,
)

STAGE = CROSS_VALIDATION
BALANCE_CSV = "balance_tests.csv"


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    split = require_stage(workdir, SPLITTING)
    stores = require_stage(workdir, CONVERT)
    subjects = read_csv(split / TRAIN_SUBJECTS_CSV)
    folds = subject_folds(subjects, config.cv.n_folds, config.seed)
    fold_of = folds.set_index("subject_name")["fold"]
    per_subject = subjects.assign(fold=subjects["subject_name"].map(fold_of), bin=subjects["volume_bin"])
    planes = study_planes(workdir)
    tests = [fold_balance_tests(per_subject, len(config.bins.volume_edges) - 1, "3d", groups="subject_name",
                                seed=derive_seed(config.seed, "balance", "3d"))]
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir)) as out:
        write_csv(folds, out.path / FOLDS_CSV)
        grids = _subject_grids(workdir) if config.cv.edge_slices else None   # headers read once, not per plane
        for plane in planes:
            (out.path / plane).mkdir()
            index = store_index(stores, plane)
            stacks = _own_slices(grids, plane, index)
            lesion_slices = without_edge_slices(read_csv(split / plane_lesions_80_csv(plane)), stacks,
                                                config.cv.edge_slices)
            lesion_slices["fold"] = lesion_slices["subject_name"].map(fold_of)
            index = without_edge_slices(index, stacks, config.cv.edge_slices)
            index["fold"] = index["subject_name"].map(fold_of)
            h, w = store_geometry(stores, plane).canvas.slice_shape
            min_brain = math.ceil(config.cv.min_brain_fraction * h * w)
            for fold in range(1, config.cv.n_folds + 1):
                fold_lesions = lesion_slices[lesion_slices["fold"] == fold].drop(columns="fold")
                counts = fold_lesions.groupby("subject_name").size()
                fold_index = index[index["fold"] == fold].drop(columns="fold")
                if config.batches.kind in POOL_BATCH_KINDS:   # an epoch is drawn from every candidate
                    normals = (normal_candidates(fold_index, min_brain)[["subject_name", "slice"]]
                               .sort_values(["subject_name", "slice"], kind="mergesort"))
                else:
                    normals = select_normal_slices(fold_index, counts, config.cv.normal_ratio, min_brain,
                                                   derive_seed(config.seed, "normals", plane, fold))
                write_csv(fold_lesions, out.path / lesion_slices_csv(plane, fold))
                write_csv(normals, out.path / normal_slices_csv(plane, fold))
            n_slice_bins = len(config.bins.slice_edges(plane)) - 1
            tests.append(fold_balance_tests(lesion_slices.rename(columns={"slice_bin": "bin"}), n_slice_bins,
                                            plane, groups="subject_name",
                                            seed=derive_seed(config.seed, "balance", plane)))
        check_subject_disjoint(out.path, config.cv.n_folds, planes)
        table = pd.concat(tests, ignore_index=True)
        write_csv(table, out.path / BALANCE_CSV)
        synthetic = is_synthetic_run(workdir)
        figures.fold_balance_figure(table, out.path / "balance_tests.png", synthetic,
                                    title="Fold balance: textbook p-values (items treated as independent)")
        figures.fold_balance_figure(table.assign(p_value=table[PERMUTATION_COLUMN]),
                                    out.path / "balance_tests_subject_permutation.png", synthetic,
                                    title="Fold balance: subject-level permutation p-values")
    return stage_dir(workdir, STAGE)


def check_subject_disjoint(folder: Path, n_folds: int, planes: tuple[str, ...]) -> None:
    """Every subject's slices, in every plane, lie in one fold only (upstream leaked, §4.3)."""
    owner: dict[str, int] = {}
    for plane in planes:
        for fold in range(1, n_folds + 1):
            for name in (lesion_slices_csv(plane, fold), normal_slices_csv(plane, fold)):
                for subject in read_csv(folder / name)["subject_name"].unique():
                    if owner.setdefault(subject, fold) != fold:
                        raise StrokesegError(f"{folder / name}: subject {subject} is in folds "
                                             f"{owner[subject]} and {fold}")


def _subject_grids(workdir: Path):
    """(grid plan, each subject's native grid, read from its first channel's header) where subjects have
    grids of their own, else None: a fixed plan's subjects fill the whole plan volume."""
    plan = grid_plan(workdir)
    if plan.kind == "fixed":
        return None
    cohort = read_csv(require_stage(workdir, DATASET) / COHORT_CSV)
    return plan, {subject: native_grid(Path(path))
                  for subject, path in zip(cohort["subject_name"], cohort[plan.channels[0]])}


def _own_slices(grids, plane: str, index: pd.DataFrame) -> pd.DataFrame:
    """The first and last slice of each subject's own volume in ``plane`` (subject_name, slice; two rows
    per subject): on a target-spacing plan a subject is centred in a plan volume padded up to the
    largest subject, so the ends of its own stack, which ``cv.edge_slices`` drops, are not the store's.
    ``grids``: :func:`_subject_grids`'s (None: the store index's stacks are the subjects')."""
    if grids is None:
        return index
    plan, natives = grids
    rows = []
    for subject, native in natives.items():
        first, last = plan.extent(native, PLANE_AXIS[plane])
        rows += [(subject, first), (subject, last)]
    return pd.DataFrame(rows, columns=["subject_name", "slice"])

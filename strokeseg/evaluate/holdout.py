"""Tri-planar evaluation of one held-out subject: each plane alone and the fused mask, in 3-D.

The subject's T1 is predicted by a :class:`strokeseg.infer.tri_planar.TriPlanarPredictor` on the
grid the models were trained on; each plane's probability volume is scored as ``p > 0.5`` and the
fused mask as the predictor's settings fuse it, all with
:func:`strokeseg.evaluate.volume_metrics.subject_metrics` (ATLAS rules, the settings' connectivity,
HD95 in mm from the T1's voxel size). One subject's volumes are in memory at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from strokeseg.data.nifti import load_mask, load_t1, same_affine
from strokeseg.errors import InputError
from strokeseg.evaluate.volume_metrics import subject_metrics
from strokeseg.infer.tri_planar import TriPlanarPredictor

FUSED = "fused"
SINGLE_PLANE_THRESHOLD = 0.5        # a single plane's 3-D mask: probability > 0.5


@dataclass(frozen=True)
class Grid:
    """The voxel grid the models were trained on (stage 03's stores)."""
    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass
class SubjectResult:
    rows: list[dict]                              # one metrics row per plane and for the fused mask
    fused: np.ndarray                             # uint8 {0, 1}
    probabilities: dict[str, np.ndarray]          # per plane, float32
    image: nib.Nifti1Image                        # the T1's header and affine, for writing outputs


def evaluate_subject(name: str, t1_path: Path, mask_path: Path, predictor: TriPlanarPredictor, grid: Grid,
                     binarize_masks: bool = False) -> SubjectResult:
    t1, image = load_t1(t1_path)
    affine = np.asarray(image.affine, dtype=np.float64)
    if tuple(t1.shape) != grid.shape:
        raise InputError(t1_path, f"volume shape {tuple(t1.shape)} differs from the grid the models were "
                                  f"trained on {grid.shape} (03_convert stores)")
    if not same_affine(affine, grid.affine):
        raise InputError(t1_path, "affine differs from the grid the models were trained on (03_convert stores)")
    truth = load_mask(mask_path, binarize=binarize_masks, shape=t1.shape, affine=affine, allow_empty=True)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    connectivity = predictor.settings.connectivity

    probabilities = predictor.probabilities(t1)
    rows = [{"subject_name": name, "mask": plane,
             **subject_metrics(probability > SINGLE_PLANE_THRESHOLD, truth, spacing, connectivity=connectivity)}
            for plane, probability in probabilities.items()]
    fused = predictor.mask(probabilities)
    rows.append({"subject_name": name, "mask": FUSED,
                 **subject_metrics(fused, truth, spacing, connectivity=connectivity)})
    return SubjectResult(rows, fused, probabilities, image)


HOLDOUT_COLUMNS = ("subject_name", "volume_bin", "t1w", "mask")


def read_holdout(path: Path) -> pd.DataFrame:
    """Stage 03's hold-out list (subject, volume bin, T1 and mask paths), sorted by subject name."""
    from strokeseg.workdir import read_csv

    holdout = read_csv(path)
    missing = [c for c in HOLDOUT_COLUMNS if c not in holdout.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    if holdout.empty:
        raise InputError(path, "no hold-out subjects")
    if holdout["subject_name"].duplicated().any():
        twice = holdout.loc[holdout["subject_name"].duplicated(), "subject_name"].iloc[0]
        raise InputError(path, f"subject listed twice: {twice}")
    return holdout.sort_values("subject_name", kind="stable").reset_index(drop=True)


def store_grid(convert_dir: Path, plane: str) -> Grid:
    """The grid of one plane's stage-03 store."""
    from strokeseg.data.stores import store_geometry

    geometry = store_geometry(convert_dir, plane)
    return Grid(tuple(int(s) for s in geometry.volume_shape), np.asarray(geometry.raw["affine"], dtype=float))

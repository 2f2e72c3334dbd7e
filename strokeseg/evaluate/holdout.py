"""Tri-planar evaluation of one held-out subject: each plane alone and the fused mask, in 3-D.

The subject is read onto its plan grid (:func:`strokeseg.data.planned.load_planned`: the grid the
models were trained on) and predicted there by a
:class:`strokeseg.infer.tri_planar.TriPlanarPredictor`; each plane's probability volume is taken as
``p > 0.5`` and the fused mask as the predictor's settings fuse it. Every mask is then moved back
to the subject's own grid (:mod:`strokeseg.data.grid_plan`; nothing moves on a ``fixed`` plan) and
scored there against the subject's own mask, as ISLES evaluates, with
:func:`strokeseg.evaluate.volume_metrics.subject_metrics` (ATLAS rules, the settings' connectivity,
HD95 in mm from the subject's voxel size, or in voxels when the spacing is not known: the ``units``
column says which). One subject's volumes are in memory at a time.

With a 3-D model beside the planes (``volume``: a predictor whose one "plane" is the volume), the
same subject is also predicted by sliding windows and scored as the ``volume`` mask, and with
``average`` the mean of the fused probability and the 3-D probability as the ``average`` mask; both
go through the fused mask's threshold and small-component removal, so the masks differ only in
where their probabilities come from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from strokeseg.data.grid_plan import GridPlan
from strokeseg.data.planned import load_planned
from strokeseg.errors import InputError
from strokeseg.evaluate.volume_metrics import subject_metrics
from strokeseg.infer.tri_planar import TriPlanarPredictor

FUSED = "fused"
VOLUME_MASK, AVERAGE = "volume", "average"   # a 3-D model's mask, and its mean with the fused probability
SINGLE_PLANE_THRESHOLD = 0.5        # a single plane's 3-D mask: probability > 0.5


@dataclass
class SubjectResult:
    rows: list[dict]                              # one metrics row per plane and for the fused mask
    fused: np.ndarray                             # uint8 {0, 1} on the subject's own grid
    truth: np.ndarray                             # the ground-truth mask on the subject's own grid
    probabilities: dict[str, np.ndarray]          # per plane, float32, on the subject's own grid
    image: nib.Nifti1Image                        # the first channel's header and affine, for outputs


def evaluate_subject(name: str, channels: list[tuple[str, Path]], mask_path: Path, predictor: TriPlanarPredictor,
                     plan: GridPlan, binarize_masks: bool = False, keep_probabilities: bool = False,
                     volume: TriPlanarPredictor | None = None, average: bool = False) -> SubjectResult:
    try:
        subject = load_planned(channels, mask_path, plan, binarize_masks, allow_empty=True)
    except InputError as exc:
        if plan.kind == "fixed" and "cohort grid" in exc.fault:
            raise InputError(exc.path, exc.fault.replace("the cohort grid", "the grid the models were trained on")
                             + " (03_convert stores)") from None
        raise
    truth, native = subject.native_mask, subject.native
    spacing = subject.zooms
    connectivity = predictor.settings.connectivity
    units = {"units": "mm" if plan.spacing_known else "voxels"}

    grid = plan.subject_affine(native)     # the plan grid's affine: normalised as stage 03 normalised
    probabilities = predictor.probabilities(subject.volume, grid)
    rows = [{"subject_name": name, "mask": plane,
             **subject_metrics(plan.mask_to_native((probability > SINGLE_PLANE_THRESHOLD).astype(np.uint8), native),
                               truth, spacing, connectivity=connectivity), **units}
            for plane, probability in probabilities.items()]
    fused = plan.mask_to_native(predictor.mask(probabilities), native)
    rows.append({"subject_name": name, "mask": FUSED,
                 **subject_metrics(fused, truth, spacing, connectivity=connectivity), **units})
    extra = {}
    if volume is not None:
        extra[VOLUME_MASK] = next(iter(volume.probabilities(subject.volume, grid).values()))
        if average:
            extra[AVERAGE] = (predictor.fused_probability(probabilities) + extra[VOLUME_MASK]) * np.float32(0.5)
        for key, probability in extra.items():
            mask = plan.mask_to_native(volume.mask({key: probability}), native)
            rows.append({"subject_name": name, "mask": key,
                         **subject_metrics(mask, truth, spacing, connectivity=connectivity), **units})
    if keep_probabilities:
        probabilities = {**probabilities, FUSED: predictor.fused_probability(probabilities), **extra}
        probabilities = {key: plan.probability_to_native(p, native) for key, p in probabilities.items()}
    else:
        probabilities = {}
    return SubjectResult(rows, fused, truth, probabilities, subject.image)


HOLDOUT_COLUMNS = ("subject_name", "volume_bin", "mask")   # and one file column per image channel


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

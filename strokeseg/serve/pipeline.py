"""One served case from its stored scans to its mask, lesion table and overlay: ``strokeseg predict``'s
path (:func:`strokeseg.infer.predict.place_case`, the same :class:`TriPlanarPredictor`), one plane at a
time so that the page can say which plane is being predicted.

The result the page shows: whether the scan was resampled onto the models' grid; the lesions of the
mask on the scan's own grid and where each one is (:func:`strokeseg.infer.lesion_report.lesion_report`,
the table ``strokeseg predict`` writes as ``<case>_lesions.csv``), their count, total volume and the
whole mask's location, or for a scan not in MNI space the one-line reason instead (``location_note``,
once; a scan declares MNI space by its header's MNI code or a ``space-MNI`` entity in the name of the
file the user uploaded); and per plane the agreement of that plane alone (probability > 0.5) with the
fused mask (Dice on the models' grid; 1.0 when both are empty). Outputs: ``mask.nii.gz`` (uint8, the
scan's affine and header), ``lesions.csv`` and ``overlay.png`` (three planes through the largest
lesion's centre, or the volume's centre).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from strokeseg.data.grid_plan import GridPlan
from strokeseg.data.nifti import write_nifti
from strokeseg.evaluate.holdout import SINGLE_PLANE_THRESHOLD
from strokeseg.infer.inference import normalized_volume, per_slice
from strokeseg.infer.lesion_report import lesion_report, space_note
from strokeseg.infer.predict import Case, place_case
from strokeseg.infer.tri_planar import TriPlanarPredictor
from strokeseg.serve.cases import MASK, OVERLAY, TABLE
from strokeseg.workdir import write_csv

Progress = Callable[[str, str], None]    # (status, human-readable step)


def agreement(plane_mask: np.ndarray, fused: np.ndarray) -> float:
    """Dice of one plane's mask with the fused mask (1.0 when both are empty)."""
    both = int(np.count_nonzero(plane_mask & fused))
    total = int(np.count_nonzero(plane_mask)) + int(np.count_nonzero(fused))
    return 1.0 if total == 0 else 2.0 * both / total


def _records(table: pd.DataFrame) -> list[dict]:
    """The table's rows for JSON, which has no NaN: an empty cell (a share of an unlocated lesion) is null."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


def run_case(name: str, scans: dict[str, Path], folder: Path, predictor: TriPlanarPredictor, plan: GridPlan,
             progress: Progress, file_names: dict[str, str] | None = None) -> dict:
    """Predict one case and write its outputs into ``folder``; returns the result the API reports.
    ``file_names``: channel -> the name the user gave the file (for its ``space-MNI`` entity).
    Faults in the scans are :class:`strokeseg.errors.InputError`s (the caller reports them)."""
    start = time.perf_counter()
    progress("reading", "reading the scan")
    placed = place_case(Case(name, tuple((c, scans[c]) for c in plan.channels)), plan)
    normalized = None if per_slice(predictor.convert, predictor.kinds) else \
        normalized_volume(placed.volume, predictor.convert, predictor.kinds, placed.affine)
    probabilities = {}
    planes = list(predictor.predictors)
    for k, plane in enumerate(planes, start=1):
        progress("predicting", f"predicting plane {k} of {len(planes)} ({plane})")
        probabilities[plane] = predictor.plane_probability(plane, placed.volume, normalized, placed.affine)
    progress("fusing", "fusing the planes" if len(planes) > 1 else "thresholding")
    fused = predictor.mask(probabilities).astype(bool)
    agreements = {plane: agreement(p > SINGLE_PLANE_THRESHOLD, fused) for plane, p in probabilities.items()}
    del probabilities
    progress("writing", "locating the lesions, writing the mask, the lesion table and the overlay")
    mask = plan.mask_to_native(fused.astype(np.uint8), placed.native)
    affine = np.asarray(placed.image.affine, dtype=np.float64)
    first = plan.channels[0]
    declared = (file_names or {}).get(first) or scans[first].name
    report = lesion_report(mask, affine, space_note(declared, placed.image.header))
    table = report.lesions
    write_nifti(folder / MASK, mask, reference=placed.image, dtype=np.uint8)
    write_csv(table, folder / TABLE)
    _overlay(placed.first_channel, mask, affine, folder / OVERLAY)
    location = {k: v for k, v in report.summary.items() if k != "location_note"}
    return {"resampled": bool(placed.resampled), "lesion_count": int(len(table)),
            "total_volume_ml": float(table["volume_ml"].sum()), "lesions": _records(table),
            "location": location, "location_note": report.note,
            "agreement": agreements, "seconds": round(time.perf_counter() - start, 3)}


def _overlay(scan: np.ndarray, mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    from strokeseg.report.fusion_figures import overlay_figure

    overlay_figure(scan, None, mask, path, synthetic=False, spacing=np.linalg.norm(affine[:3, :3], axis=0),
                   title="Scan and predicted lesion mask (research software, not for clinical use)")

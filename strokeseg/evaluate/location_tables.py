"""Results by lesion location: per-subject metrics and lesion-wise detection grouped by location class
(cortical, subcortical, both, ...) and by hemisphere, beside the volume-bin tables.

The locations are stage 01's (:mod:`strokeseg.data.lesion_locations`): a subject's class and
hemisphere are those of its whole lesion mask (``subject_locations.csv``), a lesion's its own
(``lesion_locations.csv``). Subjects without lesion voxels form the group ``no lesion``. Every group
of :data:`GROUPS` is listed, empty ones with n = 0, so that tables of different runs line up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from strokeseg.contracts import DATASET, LESION_LOCATIONS_CSV, SUBJECT_LOCATIONS_CSV
from strokeseg.data.lesion_locations import HEMISPHERES, LOCATION_CLASSES
from strokeseg.evaluate.subject_tables import summary_per_group
from strokeseg.workdir import read_csv, stage_dir

NO_LESION = "no lesion"
GROUPS = {"location_class": (*LOCATION_CLASSES, NO_LESION), "hemisphere": (*HEMISPHERES, NO_LESION)}
LOCATION_METRICS = ("dice", "precision", "recall", "lesionwise_f1")
DETECTION_COLUMNS = ("grouping", "group", "n_lesions", "detected", "detection_rate", "median_voxels")


def subject_locations(workdir: Path) -> pd.DataFrame | None:
    """Stage 01's per-subject classes and hemispheres; None when stage 01 did not locate the lesions."""
    path = stage_dir(workdir, DATASET) / SUBJECT_LOCATIONS_CSV
    if not path.is_file():
        return None
    return read_csv(path, required=("subject_name",))


def lesion_locations(workdir: Path) -> pd.DataFrame | None:
    """Stage 01's per-lesion table; None when stage 01 did not locate the lesions."""
    path = stage_dir(workdir, DATASET) / LESION_LOCATIONS_CSV
    if not path.is_file():
        return None
    return read_csv(path, required=("subject_name", "lesion", "location_class", "hemisphere"))


def with_locations(subjects: pd.DataFrame, locations: pd.DataFrame) -> pd.DataFrame:
    """``subjects`` with each subject's ``location_class`` and ``hemisphere`` (``no lesion`` when it has none)."""
    columns = list(GROUPS)
    located = locations[["subject_name", *columns]].astype({c: str for c in columns})
    frame = subjects.drop(columns=[c for c in columns if c in subjects], errors="ignore") \
        .merge(located, on="subject_name", how="left")
    for column in columns:
        frame[column] = frame[column].fillna("").replace("", NO_LESION)
    return frame


def by_location(subjects: pd.DataFrame, key: str, order: Sequence[str],
                metrics: Sequence[str] = LOCATION_METRICS) -> pd.DataFrame:
    """Per ``key`` value (mask or plane, in ``order``), grouping (location class, hemisphere) and group:
    n subjects and mean/std/median of each metric. ``subjects`` carries :func:`with_locations`' columns."""
    parts = []
    for grouping, groups in GROUPS.items():
        table = summary_per_group(subjects.rename(columns={grouping: "group"}), key, order, "group", groups, metrics)
        table.insert(1, "grouping", grouping)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def detection_by_location(lesions: pd.DataFrame) -> pd.DataFrame:
    """Lesion-wise detection per grouping and group: n lesions, detected, their share, median size.
    ``lesions``: stage 01's per-lesion rows with a boolean ``detected`` column."""
    rows = []
    for grouping, groups in GROUPS.items():
        for group in groups[:-1]:            # a lesion always has a class and a side
            chosen = lesions[lesions[grouping] == group]
            n = int(len(chosen))
            hit = int(chosen["detected"].astype(bool).sum())
            rows.append({"grouping": grouping, "group": group, "n_lesions": n, "detected": hit,
                         "detection_rate": hit / n if n else np.nan,
                         "median_voxels": float(chosen["voxels"].median()) if n else np.nan})
    return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))

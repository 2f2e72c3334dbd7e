"""Where each lesion is: hemisphere, compartment class and atlas regions, per lesion and per subject.

A lesion is a connected component of ``mask > 0`` (26-connectivity in 3-D, the package's rule for
subjects, :mod:`strokeseg.data.lesions`), numbered largest first as in
:func:`strokeseg.data.lesions.lesion_table`. Regions and compartments come from a
:class:`strokeseg.data.region_atlas.RegionAtlas` on the mask's own grid.

Rules (one share, :data:`MIN_SHARE`, for both, so that a partial-volume rim touching the cortex or
crossing the midline by a voxel or two does not change the answer):

- hemisphere, by the world x coordinate of each voxel (RAS: x < 0 is left): ``bilateral`` when each
  side holds at least ``MIN_SHARE`` of the lesion's voxels, else the side holding more (``midline``
  when every voxel lies on x = 0). ``left_share`` and ``right_share`` are the shares of the lesion's
  voxels on each side (voxels on x = 0 belong to neither);
- class: the compartments holding at least ``MIN_SHARE`` of the lesion's voxels: ``cortical``,
  ``subcortical``, ``both`` (cortical and subcortical); a lesion with neither is ``infratentorial``
  when the brain stem and cerebellum hold at least ``MIN_SHARE``, else ``outside`` (outside every
  region of the atlas, e.g. in a sulcus or beyond the brain of the template).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from strokeseg.data.lesions import crop, structure
from strokeseg.data.region_atlas import COMPARTMENTS, CORTICAL, INFRATENTORIAL, SUBCORTICAL, RegionAtlas

MIN_SHARE = 0.1
BOTH, OUTSIDE = "both", "outside"
LOCATION_CLASSES = (CORTICAL, SUBCORTICAL, BOTH, INFRATENTORIAL, OUTSIDE)
LEFT, RIGHT, BILATERAL, MIDLINE = "left", "right", "bilateral", "midline"
HEMISPHERES = (LEFT, RIGHT, BILATERAL, MIDLINE)
CONNECTIVITY = 26
TOP_REGIONS = 3

LOCATION_COLUMNS = ("hemisphere", "left_share", "right_share", "location_class", "cortical_voxels",
                    "subcortical_voxels", "infratentorial_voxels", "outside_voxels", "regions")
LESION_COLUMNS = ("subject_name", "lesion", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm",
                  "centroid_z_mm") + LOCATION_COLUMNS
SUBJECT_COLUMNS = ("subject_name", "lesions", "voxels", "volume_ml") + LOCATION_COLUMNS[:-1] + ("top_regions",)
LOAD_COLUMNS = ("subject_name", "region", "compartment", "voxels", "volume_ml")


def hemisphere(left: int, right: int, total: int) -> str:
    if total <= 0:
        return ""
    if left == 0 and right == 0:
        return MIDLINE
    if min(left, right) >= MIN_SHARE * total:
        return BILATERAL
    return LEFT if left >= right else RIGHT


def location_class(cortical: int, subcortical: int, infratentorial: int, total: int) -> str:
    if total <= 0:
        return ""
    floor = MIN_SHARE * total
    has_cortex, has_deep = cortical >= floor and cortical > 0, subcortical >= floor and subcortical > 0
    if has_cortex and has_deep:
        return BOTH
    if has_cortex:
        return CORTICAL
    if has_deep:
        return SUBCORTICAL
    return INFRATENTORIAL if infratentorial >= floor and infratentorial > 0 else OUTSIDE


# The location classes a lesion placed in a vascular territory can have (strokeseg.data.synthetic):
# cortical territories supply their white matter too, the deep (lenticulostriate, thalamic) one does
# not reach the cortex, cerebellum and brain stem are below the tentorium.
TERRITORY_CLASSES = {
    "MCA": (CORTICAL, SUBCORTICAL, BOTH), "ACA": (CORTICAL, SUBCORTICAL, BOTH), "PCA": (CORTICAL, SUBCORTICAL, BOTH),
    "deep": (SUBCORTICAL, BOTH), "cerebellum": (INFRATENTORIAL,), "brainstem": (INFRATENTORIAL,),
}


def agrees_with_territory(territory: str, side: str, location: str, side_found: str) -> bool | None:
    """Whether the atlas-derived class and hemisphere fit the territory and side a lesion was placed
    in (None for a lesion placed anywhere, ``other``); a lateral territory's side must be the lesion's
    hemisphere or one of a bilateral lesion's sides."""
    expected = TERRITORY_CLASSES.get(territory)
    if expected is None:
        return None
    return location in expected and (not side or side_found in (side, BILATERAL))


def _regions_text(counts: np.ndarray, atlas: RegionAtlas, voxel_ml: float) -> str:
    """``"Left Putamen 1.23 mL (812); ..."``: every region the lesion overlaps, most voxels first."""
    order = [int(r) for r in np.argsort(-counts[1:], kind="stable") + 1 if counts[r] > 0]
    return "; ".join(f"{atlas.names[r - 1]} {counts[r] * voxel_ml:.3g} mL ({int(counts[r])})" for r in order)


def top_regions(regions: str, n: int = TOP_REGIONS) -> str:
    """The first ``n`` entries of a ``regions`` text (they come most voxels first)."""
    return "; ".join(regions.split("; ")[:n]) if regions else ""


def _describe(counts: np.ndarray, left: int, right: int, atlas: RegionAtlas, compartment: np.ndarray,
              voxel_ml: float) -> dict:
    total = int(counts.sum())
    per = np.bincount(compartment[1:] + 1, weights=counts[1:], minlength=len(COMPARTMENTS) + 1)[1:].astype(np.int64)
    cortical, subcortical, infratentorial = (int(v) for v in per)
    return {"hemisphere": hemisphere(left, right, total),
            "left_share": left / total if total else np.nan, "right_share": right / total if total else np.nan,
            "location_class": location_class(cortical, subcortical, infratentorial, total),
            "cortical_voxels": cortical, "subcortical_voxels": subcortical, "infratentorial_voxels": infratentorial,
            "outside_voxels": int(counts[0]), "regions": _regions_text(counts, atlas, voxel_ml)}


def _whole(n: int, described: dict, voxel_ml: float) -> dict:
    """The whole mask's row (:data:`SUBJECT_COLUMNS`): its regions shortened to the top ones (the
    per-region load table lists them all)."""
    voxels = sum(described[f"{c}_voxels"] for c in (*COMPARTMENTS, "outside"))
    regions = described.pop("regions")
    return {"lesions": n, "voxels": voxels, "volume_ml": voxels * voxel_ml, **described,
            "top_regions": top_regions(regions)}


def _components(mask: np.ndarray) -> tuple[tuple[int, ...], np.ndarray, int] | None:
    """(start of the mask's bounding box, the box's component labels, their number); None if empty.
    Only the box is labelled: masks are mostly background, and a whole-volume pass costs more."""
    cropped = crop(np.asarray(mask) > 0)
    if cropped is None:
        return None
    box, lo = cropped
    components, n = ndimage.label(box, structure=structure(3, CONNECTIVITY))
    return lo, components, n


def _largest_first(sizes: np.ndarray) -> np.ndarray:
    """Component labels by decreasing size (``sizes[0]`` is the background), ties in label order."""
    return np.argsort(-sizes[1:], kind="stable") + 1


def _box(lo, components: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(a, a + size) for a, size in zip(lo, components.shape))


def lesion_detected(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per lesion of ``truth``, in :func:`locate`'s numbering: whether ``prediction`` overlaps it by a voxel."""
    found = _components(truth)
    if found is None:
        return np.zeros(0, dtype=bool)
    lo, components, n = found
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    hit = np.bincount(components[np.asarray(prediction)[_box(lo, components)] > 0], minlength=n + 1) > 0
    return hit[_largest_first(sizes)]


@dataclass
class Located:
    """:func:`locate`'s answer for one mask."""
    lesions: pd.DataFrame     # one row per lesion, largest first (LESION_COLUMNS without subject_name)
    whole: dict               # the whole mask described as one lesion (SUBJECT_COLUMNS without subject_name)
    load: pd.DataFrame        # one row per region the mask overlaps, most voxels first (LOAD_COLUMNS ...)
    tags: list[list] = field(default_factory=list)   # per lesion row: the tags of the points inside it
    box: tuple[tuple[int, ...], np.ndarray] | None = None   # (start, uint8 mask) of the bounding box; None if empty


def locate(mask: np.ndarray, affine: np.ndarray, atlas: RegionAtlas,
           points: Sequence[tuple[tuple[int, int, int], object]] = ()) -> Located:
    """Every lesion of ``mask`` (on the atlas's grid: same shape and affine) located; ``points``:
    (voxel index, tag) pairs, each tag reported with the lesion holding its voxel (none if outside)."""
    affine = np.asarray(affine, dtype=np.float64)
    if np.asarray(mask).shape != atlas.labels.shape or not np.allclose(affine, atlas.affine, atol=1e-3):
        raise ValueError("the mask and the region atlas lie on different grids")
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    n_regions = atlas.n_regions + 1
    compartment = atlas.compartment_of_label()
    found = _components(mask)
    if found is None:
        whole = _whole(0, _describe(np.zeros(n_regions, np.int64), 0, 0, atlas, compartment, voxel_ml), voxel_ml)
        return Located(pd.DataFrame(columns=[c for c in LESION_COLUMNS if c != "subject_name"]), whole,
                       pd.DataFrame(columns=[c for c in LOAD_COLUMNS if c != "subject_name"]))
    lo, components, n = found
    local = np.nonzero(components)
    component = components[local]
    region = np.asarray(atlas.labels[_box(lo, components)])[local].astype(np.int64)
    counts = np.bincount(component * n_regions + region, minlength=(n + 1) * n_regions).reshape(n + 1, n_regions)
    sizes = counts.sum(axis=1)
    # World x decides the side; the centroid is the affine applied to the mean voxel index (linear).
    x_mm = sum(np.float32(affine[0, a]) * (local[a] + lo[a]).astype(np.float32) for a in range(3)) \
        + np.float32(affine[0, 3])
    left = np.bincount(component, weights=x_mm < 0, minlength=n + 1).astype(np.int64)
    right = np.bincount(component, weights=x_mm > 0, minlength=n + 1).astype(np.int64)
    mean_index = np.stack([np.bincount(component, weights=local[a], minlength=n + 1) for a in range(3)], axis=1)
    mean_index[1:] = mean_index[1:] / sizes[1:, None] + np.asarray(lo, dtype=np.float64)
    centroid = mean_index @ affine[:3, :3].T + affine[:3, 3]
    rows = []
    order = _largest_first(sizes)
    row_of = np.zeros(n + 1, dtype=np.int64)
    row_of[order] = np.arange(len(order))
    tags: list[list] = [[] for _ in order]
    for voxel, tag in points:
        inside = all(a <= v < a + s for v, a, s in zip(voxel, lo, components.shape))
        c = int(components[tuple(v - a for v, a in zip(voxel, lo))]) if inside else 0
        if c:
            tags[row_of[c]].append(tag)
    for rank, c in enumerate(order, start=1):
        rows.append({"lesion": rank, "voxels": int(sizes[c]), "volume_ml": sizes[c] * voxel_ml,
                     "centroid_x_mm": centroid[c, 0], "centroid_y_mm": centroid[c, 1], "centroid_z_mm": centroid[c, 2],
                     **_describe(counts[c], int(left[c]), int(right[c]), atlas, compartment, voxel_ml)})
    total = counts.sum(axis=0)
    whole = _whole(n, _describe(total, int(left.sum()), int(right.sum()), atlas, compartment, voxel_ml), voxel_ml)
    present = [int(r) for r in np.argsort(-total[1:], kind="stable") + 1 if total[r] > 0]
    load = pd.DataFrame({"region": [atlas.names[r - 1] for r in present],
                         "compartment": [atlas.compartments[r - 1] for r in present],
                         "voxels": [int(total[r]) for r in present],
                         "volume_ml": [float(total[r]) * voxel_ml for r in present]},
                        columns=[c for c in LOAD_COLUMNS if c != "subject_name"])
    return Located(pd.DataFrame(rows, columns=[c for c in LESION_COLUMNS if c != "subject_name"]), whole, load, tags,
                   (tuple(lo), (components > 0).astype(np.uint8)))

"""Figures of where a cohort's lesions are: location classes, hemispheres and regions, and the
lesion-frequency map over the MNI152 template.

Inputs are stage 01's tables and map (:mod:`strokeseg.data.lesion_locations`): ``lesion_locations.csv``
(one row per lesion), ``lesion_load_by_region.csv`` (per subject x region) and the lesion-frequency
volume with its affine. Compared with the RAX-Net paper's "lesion locations in cortical and
subcortical regions" figure:

- every count, total and tick label is computed from the rows plotted, classes and hemispheres in
  the canonical order of ``lesion_locations`` (unknown values after them, never dropped), and each
  axis says what a class and a hemisphere mean (the ``MIN_SHARE`` rule);
- the frequency map is drawn over the template in world (mm) coordinates, so anisotropic or
  downsampled grids keep their true shape, with the orientation written on every panel;
- synthetic cohorts are marked as on every figure (``figures._title`` and the grey footnote), and
  PNGs are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Patch

from strokeseg.data.lesion_locations import BOTH, HEMISPHERES, LOCATION_CLASSES, MIN_SHARE, OUTSIDE
from strokeseg.data.region_atlas import COMPARTMENTS, mni_template
from strokeseg.data.resample import to_grid
from strokeseg.report import figures
from strokeseg.report.figures import plt

LOCATION_FIGSIZE = (13.0, 10.5)
FREQUENCY_FIGSIZE = (13.0, 5.0)
TOP_REGIONS = 15
NO_VALUE = "unknown"          # an empty class or hemisphere cell (a lesion of 0 voxels; never expected)
FREQUENCY_LABEL = "share of subjects with a lesion"
FREQUENCY_CMAP = "autumn"     # red to yellow, saturated throughout: even the lowest share stands out on grey
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
HEMISPHERE_COLOURS = {"left": "#0072B2", "right": "#D55E00", "bilateral": "#CC79A7", "midline": "#999999"}
COMPARTMENT_COLOURS = {"cortical": "#009E73", "subcortical": "#E69F00", "infratentorial": "#56B4E9"}
OTHER_COLOUR = "#bbbbbb"
CLASS_NAMES = {BOTH: "both\n(cortical +\nsubcortical)", OUTSIDE: "outside\nthe atlas"}


# ------------------------------------------------------------------------------------ aggregation
def class_hemisphere_table(lesions: pd.DataFrame) -> pd.DataFrame:
    """Lesion count and total volume per location class x hemisphere.

    One row per pair, every known class and hemisphere included (zeros where no lesion), classes in
    the order of ``LOCATION_CLASSES`` then hemispheres in the order of ``HEMISPHERES``; values the
    canonical lists do not know follow them in order of appearance, so no lesion is ever left out.
    Columns: ``location_class, hemisphere, lesions, volume_ml``.
    """
    frame = _columns(lesions, ("location_class", "hemisphere", "volume_ml"), "class_hemisphere_table")
    classes, sides = _text(frame["location_class"]), _text(frame["hemisphere"])
    class_order = list(LOCATION_CLASSES) + [c for c in dict.fromkeys(classes) if c not in LOCATION_CLASSES]
    side_order = list(HEMISPHERES) + [s for s in dict.fromkeys(sides) if s not in HEMISPHERES]
    grouped = pd.DataFrame({"location_class": classes, "hemisphere": sides,
                            "volume_ml": pd.to_numeric(frame["volume_ml"], errors="raise").astype(float)}
                           ).groupby(["location_class", "hemisphere"])["volume_ml"].agg(["size", "sum"])
    grid = pd.MultiIndex.from_product([class_order, side_order], names=["location_class", "hemisphere"])
    table = grouped.reindex(grid, fill_value=0).reset_index()
    return pd.DataFrame({"location_class": table["location_class"], "hemisphere": table["hemisphere"],
                         "lesions": table["size"].astype(np.int64), "volume_ml": table["sum"].astype(float)})


def region_load_table(load: pd.DataFrame) -> pd.DataFrame:
    """Lesion load per atlas region summed over the cohort, most load first (ties: by name).

    Columns: ``region, compartment, voxels, volume_ml, subjects`` (how many subjects have lesion
    voxels in the region).
    """
    frame = _columns(load, ("subject_name", "region", "compartment", "voxels", "volume_ml"), "region_load_table")
    frame = pd.DataFrame({"subject_name": frame["subject_name"].astype(str), "region": _text(frame["region"]),
                          "compartment": _text(frame["compartment"]),
                          "voxels": pd.to_numeric(frame["voxels"], errors="raise").astype(np.int64),
                          "volume_ml": pd.to_numeric(frame["volume_ml"], errors="raise").astype(float)})
    hit = frame[frame["voxels"] > 0]
    table = hit.groupby("region", sort=False).agg(compartment=("compartment", "first"), voxels=("voxels", "sum"),
                                                  volume_ml=("volume_ml", "sum"),
                                                  subjects=("subject_name", "nunique")).reset_index()
    table = table.sort_values(["volume_ml", "region"], ascending=[False, True], kind="stable")
    return table.reset_index(drop=True).astype({"voxels": np.int64, "subjects": np.int64})


def peak_slices(frequency: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the highest frequency (the first in C order among ties), through which the three
    planes are cut; the volume's centre when the map is 0 everywhere."""
    frequency = np.asarray(frequency)
    if frequency.ndim != 3:
        raise ValueError(f"peak_slices: expected a 3-D volume, got shape {frequency.shape}")
    if frequency.size == 0 or not np.any(frequency > 0):
        return tuple(int(s) // 2 for s in frequency.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(frequency)), frequency.shape))


# ---------------------------------------------------------------------------------- location figure
def location_figure(lesions: pd.DataFrame, load: pd.DataFrame, path: Path, synthetic: bool,
                    top: int = TOP_REGIONS, dpi: int = figures.DEFAULT_DPI) -> None:
    """Lesions over location classes, hemispheres and atlas regions, in three panels:

    (a) lesion counts per location class x hemisphere, (b) total lesion volume (mL) per location class
    x hemisphere, (c) the ``top`` regions carrying the most lesion load over the cohort, coloured by
    compartment, each with the number of subjects it is hit in. ``lesions``: ``lesion_locations.csv``
    rows; ``load``: ``lesion_load_by_region.csv`` rows. A cohort without lesions gets the figure
    with each panel saying so.
    """
    path = figures._png_path(path)
    figures._check_dpi(dpi)
    if top < 1:
        raise ValueError(f"location_figure: top must be >= 1, got {top}")
    table = class_hemisphere_table(lesions)
    regions = region_load_table(load)
    n_lesions = int(table["lesions"].sum())
    subjects = set()
    for frame in (lesions, load):
        if not frame.empty and "subject_name" in frame.columns:
            subjects |= set(frame["subject_name"].astype(str))

    fig, axes = figures._new_figure(LOCATION_FIGSIZE, synthetic, nrows=2, ncols=2,
                                    gridspec_kw={"height_ratios": [1.0, 1.25]})
    try:
        # the regions' panel takes the whole bottom row: its names are long
        grid = axes[1, 0].get_gridspec()
        for ax in axes[1]:
            ax.remove()
        region_ax = fig.add_subplot(grid[1, :])
        who = f"{n_lesions} lesion{'s' if n_lesions != 1 else ''} in {len(subjects)} subject" \
              f"{'s' if len(subjects) != 1 else ''}"
        _class_panel(axes[0, 0], table, "lesions", "lesions", f"(a) Lesions per location class and hemisphere\n"
                     f"(n = {who})", lambda v: f"{v:.0f}")
        total = float(table["volume_ml"].sum())
        _class_panel(axes[0, 1], table, "volume_ml", "lesion load (mL, summed over lesions)",
                     f"(b) Lesion load per location class and hemisphere\n(total {total:.1f} mL, n = {who})",
                     lambda v: f"{v:.1f}")
        _region_panel(region_ax, regions, top, len(subjects))
        fig.suptitle(figures._title("Lesion locations in cortical and subcortical regions", synthetic))
        figures._save(fig, path, dpi)
    finally:
        plt.close(fig)


def _class_panel(ax, table: pd.DataFrame, value: str, ylabel: str, title: str, fmt) -> None:
    """Grouped bars: one group per location class, one bar per hemisphere, values written on the bars."""
    classes = list(dict.fromkeys(table["location_class"]))
    sides = list(dict.fromkeys(table["hemisphere"]))
    values = table.set_index(["location_class", "hemisphere"])[value]
    per_class = table.groupby("location_class", sort=False)["lesions"].sum()
    per_side = table.groupby("hemisphere", sort=False)["lesions"].sum()
    width = 0.84 / len(sides)
    for s, side in enumerate(sides):
        heights = [float(values[(c, side)]) for c in classes]
        x = np.arange(len(classes)) - 0.42 + width * (s + 0.5)
        bars = ax.bar(x, heights, width, color=HEMISPHERE_COLOURS.get(side, OTHER_COLOUR),
                      label=f"{side} (n={int(per_side[side])})")
        ax.bar_label(bars, labels=[fmt(h) if h > 0 else "" for h in heights], fontsize=7, padding=1)
    ax.set_xticks(range(len(classes)),
                  [f"{CLASS_NAMES.get(c, c)}\n(n={int(per_class[c])})" for c in classes], fontsize=8)
    ax.set_xlabel(f"location class: compartments holding ≥ {MIN_SHARE:.0%} of a lesion's voxels", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.12)
    ax.grid(axis="y", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    if table["lesions"].sum() == 0:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        _say(ax, "no lesions in this cohort")
        return
    ax.legend(title=f"hemisphere (bilateral: ≥ {MIN_SHARE:.0%} on each side)", fontsize=8, title_fontsize=8,
              loc="best", frameon=False)


def _region_panel(ax, regions: pd.DataFrame, top: int, n_subjects: int) -> None:
    """Horizontal bars of the regions with the most lesion load, largest on top."""
    shown = regions.head(top)
    ax.set_title(f"(c) Regions carrying the most lesion load: top {len(shown)} of {len(regions)} regions hit "
                 f"(mL; subjects hit / {n_subjects} subjects with a lesion)"
                 if len(shown) else "(c) Regions carrying the most lesion load", fontsize=10)
    ax.set_xlabel("lesion load summed over the cohort (mL; voxels outside every atlas region are not counted)")
    if shown.empty:
        ax.set_xticks([])
        ax.set_yticks([])
        _say(ax, "no lesion voxel in any atlas region")
        return
    y = np.arange(len(shown))
    ax.barh(y, shown["volume_ml"], color=[COMPARTMENT_COLOURS.get(c, OTHER_COLOUR) for c in shown["compartment"]])
    ax.set_yticks(y, shown["region"], fontsize=8)
    ax.invert_yaxis()
    for row, (volume, hits) in enumerate(zip(shown["volume_ml"], shown["subjects"])):
        ax.text(volume, row, f"  {volume:.2f} mL · {hits}/{n_subjects} subjects", va="center", fontsize=7)
    ax.margins(x=0.22)       # room for the text after the longest bar
    ax.grid(axis="x", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    present = list(dict.fromkeys(shown["compartment"]))
    names = [c for c in COMPARTMENTS if c in present] + [c for c in present if c not in COMPARTMENTS]
    ax.legend(handles=[Patch(color=COMPARTMENT_COLOURS.get(c, OTHER_COLOUR), label=c) for c in names],
              title="compartment", fontsize=8, title_fontsize=8, loc="lower right", frameon=False)


# --------------------------------------------------------------------------------- frequency figure
# (name, axis cut across, horizontal axis, vertical axis, labels at left/right/bottom/top) on a RAS
# volume drawn with the first remaining axis to the right and the second up: neurological convention.
_PLANES = (("axial", 2, 0, 1, ("L", "R", "P", "A")),
           ("coronal", 1, 0, 2, ("L", "R", "I", "S")),
           ("sagittal", 0, 1, 2, ("P", "A", "I", "S")))
_NEUROLOGICAL = "neurological convention: the subject's left (L) on the left"
_PLANE_NOTES = {"axial": _NEUROLOGICAL, "coronal": _NEUROLOGICAL,
                "sagittal": "seen from the subject's right: anterior (A) on the right"}


def frequency_figure(frequency: np.ndarray, affine: np.ndarray, path: Path, synthetic: bool, n_subjects: int,
                     dpi: int = figures.DEFAULT_DPI) -> None:
    """The lesion-frequency map over the MNI152 template in axial, coronal and sagittal planes, each
    cut through the voxel of highest frequency (the volume's centre when it is 0 everywhere).

    ``frequency``: share of subjects with a lesion at each voxel (0..1) on the grid ``affine`` (RAS mm,
    MNI space; any voxel size). The template (nilearn's MNI152 2009, 1 mm) is sampled on that grid
    through world coordinates. Panels are drawn in mm, in neurological convention (the subject's left
    on the left), and voxels of frequency 0 are transparent.
    """
    path = figures._png_path(path)
    figures._check_dpi(dpi)
    frequency = np.asarray(frequency)
    affine = np.asarray(affine, dtype=np.float64)
    if frequency.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"frequency_figure: expected a 3-D map and a 4x4 affine, got {frequency.shape} "
                         f"and {affine.shape}")
    frequency = frequency.astype(np.float32)
    if not np.all(np.isfinite(frequency)) or frequency.min(initial=0) < 0 or frequency.max(initial=0) > 1 + 1e-6:
        raise ValueError("frequency_figure: the map must hold shares of subjects, finite and within 0..1")
    if isinstance(n_subjects, bool) or int(n_subjects) != n_subjects or n_subjects < 0:
        raise ValueError(f"frequency_figure: n_subjects must be a count, got {n_subjects!r}")
    template = _template_on(frequency.shape, affine)
    # Put the volumes in RAS axis order first, so that "right" and "up" on screen mean the same on any grid.
    frequency, ras = _to_ras(frequency, affine)
    template, _ = _to_ras(template, affine)
    centre = peak_slices(frequency)
    peak = float(frequency[centre])
    world = ras[:3, :3] @ np.asarray(centre, float) + ras[:3, 3]
    zoom, origin = np.linalg.norm(ras[:3, :3], axis=0), ras[:3, 3]
    brain = template[template > 0]
    grey_max = float(np.percentile(brain, 99.5)) if brain.size else 1.0
    norm = Normalize(vmin=0.0, vmax=peak if peak > 0 else 1.0)

    fig, axes = figures._new_figure(FREQUENCY_FIGSIZE, synthetic, ncols=3)
    try:
        for ax, (name, cut, h, v, (left, right, bottom, top)) in zip(axes, _PLANES):
            index = centre[cut]
            extent = (origin[h] - zoom[h] / 2, origin[h] + (frequency.shape[h] - 0.5) * zoom[h],
                      origin[v] - zoom[v] / 2, origin[v] + (frequency.shape[v] - 0.5) * zoom[v])
            ax.imshow(np.take(template, index, axis=cut).T, cmap="gray", vmin=0, vmax=grey_max, origin="lower",
                      extent=extent, interpolation="nearest")
            plane = np.take(frequency, index, axis=cut).T
            ax.imshow(np.ma.masked_where(plane <= 0, plane), cmap=FREQUENCY_CMAP, norm=norm, origin="lower",
                      extent=extent, interpolation="nearest")
            ax.set_title(f"{name}, {'xyz'[cut]} = {world[cut]:+.0f} mm", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(_PLANE_NOTES[name], fontsize=8, color="0.3")
            for x, y, text, ha, va in ((0.02, 0.5, left, "left", "center"), (0.98, 0.5, right, "right", "center"),
                                       (0.5, 0.02, bottom, "center", "bottom"), (0.5, 0.98, top, "center", "top")):
                ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=11,
                        fontweight="bold")
        colourbar = fig.colorbar(ScalarMappable(norm=norm, cmap=FREQUENCY_CMAP), ax=list(axes), shrink=0.8)
        colourbar.set_label(FREQUENCY_LABEL)
        if peak > 0:
            where = ", ".join(f"{c:+.0f}" for c in world)
            what = f"peak {peak:.1%}{_of_subjects(peak, n_subjects)} at ({where}) mm MNI; planes through the peak"
        else:
            what = f"no lesion{' in any subject' if n_subjects else ', no subject'}; planes through the centre"
        # two lines: a synthetic cohort's marker would push one line past the figure's edge
        fig.suptitle(figures._title(f"Lesion frequency over the MNI152 template, n = {int(n_subjects)} subjects\n"
                                    f"{what}", synthetic))
        figures._save(fig, path, dpi)
    finally:
        plt.close(fig)


def _template_on(shape, affine: np.ndarray) -> np.ndarray:
    data, template_affine = mni_template()
    return to_grid(data, template_affine, shape, affine, order=1)


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume with its axes reordered and flipped to the closest RAS order, and its new affine."""
    orientation = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(volume, orientation)
    return ras, affine @ nib.orientations.inv_ornt_aff(orientation, volume.shape)


# ---------------------------------------------------------------------------------------- helpers
def _columns(frame: pd.DataFrame, columns, where: str) -> pd.DataFrame:
    """``frame`` limited to ``columns``; an empty frame may lack them (a cohort without lesions)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing and not frame.empty:
        raise ValueError(f"{where}: missing columns {missing} (have {list(frame.columns)})")
    if missing:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return frame.loc[:, list(columns)]


def _text(column: pd.Series) -> pd.Series:
    """Category names as text; an empty CSV cell (NaN) becomes ``NO_VALUE`` rather than vanishing."""
    return column.astype(object).where(column.notna(), NO_VALUE).astype(str).str.strip().replace("", NO_VALUE)


def _of_subjects(share: float, n_subjects: int) -> str:
    """" (k of n subjects)" when the share is a whole number of the subjects, as a frequency map's is."""
    k = share * n_subjects
    return f" ({round(k)} of {n_subjects} subjects)" if n_subjects and abs(k - round(k)) < 1e-3 else ""


def _say(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="0.35")

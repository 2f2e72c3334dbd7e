"""Figures of stage 10 (tri-planar fusion on the hold-out): rainclouds, tri-planar overlays, a 3-D view.

Corrections to upstream (docs/upstream-raxnet.md §11.5, §11.6):

- the rainclouds are drawn by :func:`strokeseg.report.figures.raincloud_figure`, whose tick labels are
  built from the data ("axial (before fusion) (n=…)", "fused (after fusion) (n=…)"), so an "after"
  column can not carry a "before" label (upstream repeated "Precision before fusion" and "Recall
  before fusion" on its "after" columns and wrote "Axial Plane" under every plane's figure);
- the before/after comparison is per-subject **3-D** metrics of each single plane (probability > 0.5)
  against the fused mask, on the same subjects (upstream compared per-slice means and never
  measured the single planes in 3-D);
- overlays cut through the lesion's centre of mass in the three planes and keep the voxel
  aspect ratio; the 3-D view draws surface voxels only, subsampled, with equal axes in mm;
- every figure says in its title when the cohort is synthetic (``figures._title``) and carries the
  grey footnote, and is written atomically as PNG.

Matplotlib only (through :mod:`strokeseg.report.figures`, which selects the Agg backend); no Keras.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from strokeseg.report import figures
from strokeseg.report.figures import plt

PLANE_MASKS = ("axial", "sagittal", "coronal")
FUSED = "fused"
VOLUME_MASKS = ("volume", "average")   # a 3-D model's mask, and its mean with the fused probability
OVERLAY_FIGSIZE = (13.0, 4.8)
VIEW_FIGSIZE = (13.0, 4.8)
DEFAULT_MAX_POINTS = 4000
TRUTH_COLOUR = "#1b9e77"      # green: ground truth
PREDICTION_COLOUR = "#d95f02"  # orange: prediction
METRIC_NAMES = {"dice": "Dice", "precision": "Precision", "recall": "Recall",
                "lesionwise_f1": "Lesion-wise F1"}


# ------------------------------------------------------------------------------------ rainclouds
def mask_label(mask: str) -> str:
    """The tick label of a mask column: single planes are "before fusion", the fused mask "after"; a 3-D
    model's mask and its average with the fused one say so."""
    if mask == FUSED:
        return f"{mask} (after fusion)"
    if mask == "volume":
        return "3-D model"
    if mask == "average":
        return "average (fused + 3-D)"
    return f"{mask} (before fusion)"


def before_after_raincloud(subjects: pd.DataFrame, path: Path, synthetic: bool, metric: str = "dice",
                           rule: str = "mean", title: str | None = None) -> None:
    """Per-subject 3-D ``metric`` of each single plane (before fusion) and of the fused mask.

    ``subjects``: stage 10's ``subjects.csv`` rows (columns ``mask`` and ``metric``), one row per
    (subject, mask). Columns in the order axial, sagittal, coronal, fused, then a 3-D model's masks;
    n from the data.
    """
    _require(subjects, ("mask", metric), "before_after_raincloud")
    present = list(dict.fromkeys(subjects["mask"].astype(str)))
    known = (*PLANE_MASKS, FUSED, *VOLUME_MASKS)
    unknown = [m for m in present if m not in known]
    if unknown:
        raise ValueError(f"before_after_raincloud: unknown masks {unknown}")
    order = [m for m in known if m in present]
    frame = pd.DataFrame({"mask": subjects["mask"].astype(str).map(mask_label), metric: subjects[metric]})
    name = METRIC_NAMES.get(metric, metric)
    title = title or f"Hold-out: per-subject 3-D {name}, single planes vs fused (fusion: {rule})"
    figures.raincloud_figure(frame, group="mask", value=metric, title=title,
                             ylabel=f"{name} per subject (3-D; single planes: probability > 0.5)",
                             path=path, synthetic=synthetic,
                             order=[mask_label(m) for m in order])


def fused_metrics_raincloud(subjects: pd.DataFrame, path: Path, synthetic: bool,
                            metrics: Sequence[str] = ("dice", "precision", "recall"),
                            title: str | None = None) -> None:
    """Per-subject 3-D Dice, precision and recall of the fused mask (upstream's 3-D raincloud).

    Rows whose ``mask`` is not "fused" are ignored when the column exists.
    """
    _require(subjects, tuple(metrics), "fused_metrics_raincloud")
    fused = subjects[subjects["mask"].astype(str) == FUSED] if "mask" in subjects.columns else subjects
    if fused.empty:
        raise ValueError("fused_metrics_raincloud: no fused rows")
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    long = pd.concat([pd.DataFrame({"metric": name, "value": fused[m].to_numpy(float)})
                      for m, name in zip(metrics, names)], ignore_index=True)
    title = title or "Hold-out: per-subject 3-D metrics of the fused mask"
    figures.raincloud_figure(long, group="metric", value="value", title=title, ylabel="value per subject (3-D)",
                             path=path, synthetic=synthetic, order=names)


# -------------------------------------------------------------------------------------- overlays
def lesion_centre(truth: np.ndarray, prediction: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel index of the truth's centre of mass (rounded); the prediction's if the truth is empty;
    the volume's centre if both are."""
    for mask in (truth, prediction):
        if mask is not None and np.any(mask):
            centre = ndimage.center_of_mass(np.asarray(mask) > 0)
            return tuple(int(round(c)) for c in centre)
    return tuple(s // 2 for s in np.shape(truth))


def _panel(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice at ``index`` along ``axis`` as an image with the first remaining axis horizontal
    and the second vertical (drawn with origin at the bottom): x–y for axial, y–z for sagittal,
    x–z for coronal, i.e. RAS volumes look right/anterior/superior up/right."""
    return np.take(volume, index, axis=axis).T


def overlay_figure(t1: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, path: Path, synthetic: bool,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "",
                   centre: Sequence[int] | None = None, dpi: int = figures.DEFAULT_DPI) -> None:
    """Axial, sagittal and coronal slices through the lesion's centre of mass: the T1 in grey,
    the ground truth's outline in green and the prediction filled in orange (outline too).

    Volumes are ``[x, y, z]`` of one shape; ``spacing`` (mm) sets each panel's aspect ratio.
    ``truth=None`` (a new scan, as ``strokeseg serve`` shows it): no ground truth is drawn.
    """
    path = figures._png_path(path)
    has_truth = truth is not None
    t1, prediction = np.asarray(t1), np.asarray(prediction) > 0
    truth = np.asarray(truth) > 0 if has_truth else np.zeros(prediction.shape, dtype=bool)
    if not (t1.shape == truth.shape == prediction.shape) or t1.ndim != 3:
        raise ValueError(f"overlay_figure: T1 {t1.shape}, truth {truth.shape} and prediction "
                         f"{prediction.shape} must be 3-D volumes of one shape")
    spacing = [float(s) for s in spacing]
    centre = lesion_centre(truth, prediction) if centre is None else tuple(int(c) for c in centre)
    finite = t1[np.isfinite(t1)] if t1.dtype.kind == "f" else t1
    head = finite[finite > 0]
    vmax = float(np.percentile(head, 99.5)) if head.size else float(np.max(finite) or 1)
    views = (("axial", 2, (0, 1)), ("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)))
    fig, axes = figures._new_figure(OVERLAY_FIGSIZE, synthetic, ncols=3)
    try:
        for ax, (name, axis, (h, v)) in zip(axes, views):
            index = centre[axis]
            aspect = spacing[v] / spacing[h]
            ax.imshow(_panel(t1, axis, index), cmap="gray", vmin=0, vmax=vmax, origin="lower",
                      aspect=aspect, interpolation="nearest")
            pred = _panel(prediction, axis, index)
            ax.imshow(np.ma.masked_where(~pred, pred.astype(float)), cmap=_solid(PREDICTION_COLOUR),
                      alpha=0.45, origin="lower", aspect=aspect, interpolation="nearest", vmin=0, vmax=1)
            outlines = ((pred, PREDICTION_COLOUR, 0.8), (_panel(truth, axis, index), TRUTH_COLOUR, 1.4))
            for mask, colour, width in outlines:
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width, origin="lower")
            ax.set_title(f"{name} (slice {index} along {'xyz'[axis]})", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        handles = [plt.Rectangle((0, 0), 1, 1, color=PREDICTION_COLOUR, alpha=0.45, label="prediction (filled)")]
        if has_truth:
            handles.insert(0, plt.Line2D([], [], color=TRUTH_COLOUR, linewidth=1.4, label="ground truth (outline)"))
        fig.legend(handles=handles, loc="outside lower right", ncols=len(handles), frameon=False)
        default = "Image, ground truth and prediction" if has_truth else "Image and prediction"
        fig.suptitle(figures._title(title or default, synthetic))
        figures._save(fig, path, dpi)
    finally:
        plt.close(fig)


def _solid(colour: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour])


# ---------------------------------------------------------------------------------------- 3-D view
def surface_points(mask: np.ndarray, spacing: Sequence[float], max_points: int = DEFAULT_MAX_POINTS,
                   seed: int = 0) -> np.ndarray:
    """(n, 3) coordinates in mm of the mask's surface voxels (mask minus its 6-connected erosion),
    at most ``max_points`` of them drawn without replacement with ``seed``."""
    mask = np.asarray(mask) > 0
    surface = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(surface).astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    if len(points) > max_points:
        keep = np.random.default_rng(seed).choice(len(points), size=max_points, replace=False)
        points = points[np.sort(keep)]
    return points


def lesion_3d_figure(truth: np.ndarray, prediction: np.ndarray, path: Path, synthetic: bool,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "",
                     max_points: int = DEFAULT_MAX_POINTS, seed: int = 0, dpi: int = figures.DEFAULT_DPI) -> None:
    """3-D scatter of the surface voxels of the ground truth, the fused prediction and both together
    (upstream §11.5 drew every voxel of five masks; surfaces, subsampled, are enough to see shape).

    All panels share the same axis limits (mm, voxel index × spacing) and an equal aspect.
    """
    path = figures._png_path(path)
    truth, prediction = np.asarray(truth) > 0, np.asarray(prediction) > 0
    if truth.shape != prediction.shape or truth.ndim != 3:
        raise ValueError(f"lesion_3d_figure: truth {truth.shape} and prediction {prediction.shape} "
                         "must be 3-D volumes of one shape")
    t_points = surface_points(truth, spacing, max_points, seed)
    p_points = surface_points(prediction, spacing, max_points, seed + 1)
    both = np.concatenate([t_points, p_points]) if len(t_points) + len(p_points) else np.zeros((1, 3))
    lo, hi = both.min(axis=0), both.max(axis=0)
    half = max(float((hi - lo).max()) / 2, 1.0) * 1.05
    middle = (lo + hi) / 2
    fig = plt.figure(figsize=VIEW_FIGSIZE, layout="constrained")
    if synthetic:
        bottom = figures._FOOTNOTE_INCHES / VIEW_FIGSIZE[1]
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
        fig.text(0.01, bottom / 2, figures.SYNTHETIC_NOTE, ha="left", va="center", fontsize=8,
                 color="0.45", style="italic")
    try:
        panels = ((f"ground truth ({int(truth.sum())} voxels)", [(t_points, TRUTH_COLOUR)]),
                  (f"fused prediction ({int(prediction.sum())} voxels)", [(p_points, PREDICTION_COLOUR)]),
                  ("both", [(t_points, TRUTH_COLOUR), (p_points, PREDICTION_COLOUR)]))
        for i, (name, layers) in enumerate(panels):
            ax = fig.add_subplot(1, 3, i + 1, projection="3d")
            for points, colour in layers:
                if len(points):
                    ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=3, c=colour, alpha=0.6,
                               depthshade=False, linewidths=0)
            for setter, m in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), middle):
                setter(m - half, m + half)
            ax.set_box_aspect((1, 1, 1))
            ax.set_xlabel("x (mm)", fontsize=8)
            ax.set_ylabel("y (mm)", fontsize=8)
            ax.set_zlabel("z (mm)", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.set_title(name, fontsize=10)
        fig.suptitle(figures._title(title or "Fused prediction vs ground truth (surface voxels)", synthetic))
        figures._save(fig, path, dpi)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------- helpers
def overlay_subjects(fused_scores: pd.DataFrame, count: int, metric: str = "dice") -> list[str]:
    """``count`` subjects spread evenly over the ranking of the fused ``metric`` (worst, …, median,
    …, best), so the overlays show failures as well as successes; ties broken by subject name."""
    if count <= 0 or fused_scores.empty:
        return []
    ranked = fused_scores.assign(_score=fused_scores[metric].fillna(-np.inf)).sort_values(
        ["_score", "subject_name"], kind="stable")["subject_name"].tolist()
    positions = np.unique(np.round(np.linspace(0, len(ranked) - 1, min(count, len(ranked)))).astype(int))
    return [ranked[i] for i in positions]


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}")
    if frame.empty:
        raise ValueError(f"{where}: no rows")


# ----------------------------------------------------------------------------- stage 10's set
def holdout_figures(subjects: pd.DataFrame, files: pd.DataFrame, masks_dir: Path, root: Path, synthetic: bool,
                    rule: str, overlays: int, binarize_masks: bool = False, image_column: str = "t1w") -> None:
    """Stage 10's figures under ``root``: the before/after and fused-metrics rainclouds, tri-planar
    overlays of ``overlays`` subjects spread over the fused-Dice ranking (``overlays/``) and the 3-D
    view of the median subject with a lesion. ``files``: image (``image_column``: the first channel) and mask
    paths indexed by subject name;
    ``masks_dir``: the fused masks (``<subject>_fused_mask.nii.gz``); ``rule``: the fusion in words."""
    from strokeseg.contracts import fused_mask_file
    from strokeseg.data.nifti import load_mask, load_t1

    before_after_raincloud(subjects, root / "dice_before_after_fusion.png", synthetic, rule=rule)
    fused_metrics_raincloud(subjects, root / "fused_metrics_3d.png", synthetic,
                            title=f"Hold-out: per-subject 3-D metrics of the fused mask ({rule})")
    fused = subjects[subjects["mask"] == FUSED]
    picks = overlay_subjects(fused, overlays)
    lesion = fused[(fused["truth_voxels"] > 0) | (fused["pred_voxels"] > 0)]
    view = overlay_subjects(lesion if not lesion.empty else fused, 3)
    view_subject = view[len(view) // 2] if view else None
    if picks:
        (root / "overlays").mkdir()
    for name in dict.fromkeys(picks + ([view_subject] if view_subject else [])):
        t1, image = load_t1(files.loc[name, image_column])
        truth = load_mask(files.loc[name, "mask"], binarize=binarize_masks, shape=t1.shape,
                          affine=image.affine, allow_empty=True)
        prediction = load_mask(masks_dir / fused_mask_file(name), allow_empty=True)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        dice = float(fused.loc[fused["subject_name"] == name, "dice"].iloc[0])
        if name in picks:
            overlay_figure(t1, truth, prediction, root / "overlays" / f"{name}_overlay.png", synthetic, spacing,
                           title=f"{name}: {image_column}, ground truth and fused mask (3-D Dice {dice:.3f})")
        if name == view_subject:
            lesion_3d_figure(truth, prediction, root / "fusion_3d_view.png", synthetic, spacing,
                             title=f"{name}: fused mask vs ground truth, surface voxels "
                                   f"(3-D Dice {dice:.3f}, median subject)")
        del t1, truth, prediction

"""Figures: lesion-size distributions, rainclouds, fold-balance p-values.

Corrections to upstream (docs/upstream-raxnet.md §1.4, §2.3, §4.2, §11.6):

- every tick label is built from the data (group name and its n), never typed by hand, so an
  "after" column can not carry a "before" label and the n shown is the n plotted;
- synthetic cohorts are marked in the title and in a grey footnote;
- lesion sizes span 13 … 500,000 voxels, so sizes are drawn on a log10 axis (KDE, box and points
  all computed on log10 values) and the axis label says so;
- bins use the one right-closed convention of ``strokeseg.protocol.bins``;
- PNGs are written atomically at a modest default dpi and every figure is closed.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ptitprince  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

from strokeseg.protocol.bins import bin_labels  # noqa: E402
from strokeseg.workdir import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

SYNTHETIC_SUFFIX = " — SYNTHETIC cohort (not ATLAS)"
SYNTHETIC_NOTE = "Synthetic ATLAS-like data built on the MNI152 2009 template; not patient data."
DEFAULT_DPI = 150

DISTRIBUTION_FIGSIZE = (8.0, 6.0)
RAINCLOUD_FIGSIZE = (10.0, 6.0)
FOLD_PANEL_WIDTH = 4.2
FOLD_LEGEND_WIDTH = 1.8
FOLD_HEIGHT = 4.6
_FOOTNOTE_INCHES = 0.28

LEVEL_ORDER = ("3d", "axial", "sagittal", "coronal")
LEVEL_NAMES = {"3d": "3-D"}
TEST_ORDER = ("mannwhitney_fold_vs_rest", "mannwhitney_fold_vs_pool", "chi2_bins_fold_vs_rest")
TEST_NAMES = {
    "mannwhitney_fold_vs_rest": "Mann–Whitney U: fold vs rest",
    "mannwhitney_fold_vs_pool": "Mann–Whitney U: fold vs whole pool (upstream check)",
    "chi2_bins_fold_vs_rest": "χ² on size-bin counts: fold vs rest",
}
FOLD_BALANCE_COLUMNS = ("level", "fold", "test", "statistic", "p_value")


# --------------------------------------------------------------------------------------------- API

def lesion_distribution_figure(values: Sequence[float], bins: Sequence[int], edges: Sequence[float],
                               title: str, ylabel: str, path: Path, synthetic: bool,
                               dpi: int = DEFAULT_DPI) -> None:
    """Violin of all lesion sizes with jittered points coloured by size bin (upstream §1.4).

    ``bins[i]`` is the 0-based bin index of ``values[i]`` (``strokeseg.protocol.bins.assign_bins`` with the
    same ``edges``). Values must be positive: the y axis is log10. The legend lists every bin with
    its label and count, empty bins included.
    """
    path = _png_path(path)
    _check_dpi(dpi)
    v = np.asarray(values, dtype=float).ravel()
    b = np.asarray(bins).ravel()
    labels = bin_labels(edges)
    n_bins = len(labels)
    if v.size == 0:
        raise ValueError("lesion_distribution_figure: no values")
    if b.shape != v.shape:
        raise ValueError(f"lesion_distribution_figure: {v.size} values but {b.size} bin indices")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError("lesion_distribution_figure: values must be finite and > 0 (log axis)")
    if not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= n_bins:
        raise ValueError(f"lesion_distribution_figure: bin indices must be integers in [0, {n_bins - 1}]")
    counts = np.bincount(b, minlength=n_bins)
    colours = sns.color_palette("viridis", n_bins)
    frame = pd.DataFrame({"log_value": np.log10(v), "bin": [labels[i] for i in b]})

    fig, ax = _new_figure(DISTRIBUTION_FIGSIZE, synthetic)
    try:
        sns.violinplot(data=frame, y="log_value", color="0.88", linecolor="0.45", cut=0,
                       inner="quart", width=0.8, ax=ax)
        with seeded_jitter():
            sns.stripplot(data=frame, y="log_value", hue="bin", hue_order=labels, palette=colours,
                          legend=False, jitter=0.25, size=3.5, alpha=0.8, linewidth=0.3,
                          edgecolor="white", zorder=3, ax=ax)
        ax.set_xticks([0], [f"all (n={v.size})"])
        ax.set_xlabel("")
        ax.set_ylabel(f"{ylabel} (log scale)")
        _log10_ticks(ax)
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colours[i],
                          label=f"{labels[i]}  (n={counts[i]})") for i in range(n_bins)]
        ax.legend(handles=handles, title="size bin (lo < v ≤ hi)", loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.suptitle(_title(title, synthetic))
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def raincloud_figure(data: pd.DataFrame, group: str, value: str, title: str, ylabel: str, path: Path,
                     synthetic: bool, order: Sequence[str] | None = None, log_y: bool = False,
                     dpi: int = DEFAULT_DPI) -> None:
    """Half violin + jittered points + box per group on one axis (upstream §11.6 recipe).

    Tick labels are ``"<group> (n=<count>)"`` computed from the rows plotted. NaN values are
    dropped before counting. ``order`` fixes the columns; a group listed there but absent from
    the data is shown with n=0, a group present in the data but missing from ``order`` is an
    error (it would silently vanish). With ``log_y`` every layer is drawn on log10 values.
    Groups with fewer than two distinct values get a plain tick instead of a density.
    """
    path = _png_path(path)
    _check_dpi(dpi)
    for column in (group, value):
        if column not in data.columns:
            raise ValueError(f"raincloud_figure: no column {column!r} in {list(data.columns)}")
    frame = pd.DataFrame({"group": data[group].astype(str),
                          "value": pd.to_numeric(data[value], errors="raise").astype(float)})
    frame = frame[frame["value"].notna()].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"raincloud_figure: no non-NaN values in {value!r}")
    if not np.all(np.isfinite(frame["value"])):
        raise ValueError(f"raincloud_figure: {value!r} has infinite values")
    if log_y:
        if (frame["value"] <= 0).any():
            raise ValueError(f"raincloud_figure: log_y needs {value!r} > 0")
        frame["value"] = np.log10(frame["value"])
    present = list(dict.fromkeys(frame["group"]))
    if order is None:
        levels = present
    else:
        levels = [str(g) for g in order]
        if len(set(levels)) != len(levels):
            raise ValueError(f"raincloud_figure: duplicate names in order {levels}")
        missing = [g for g in present if g not in levels]
        if missing:
            raise ValueError(f"raincloud_figure: groups {missing} are in the data but not in order")
    counts = frame["group"].value_counts()
    n = [int(counts.get(g, 0)) for g in levels]
    distinct = frame.groupby("group")["value"].nunique()
    dense = [g for g in levels if distinct.get(g, 0) >= 2]
    colours = dict(zip(levels, _cycle(sns.color_palette("Set2"), len(levels))))
    width, offset = 0.6, 0.15  # ptitprince: violin spans [pos - offset - width/2, pos - offset]

    fig, ax = _new_figure(RAINCLOUD_FIGSIZE, synthetic)
    try:
        if dense:
            # ptitprince colours groups by their index in ``order`` when no hue is given; passing
            # hue would add a legend it has no switch for. Degenerate groups are kept out of it:
            # ptitprince 0.3.1 draws a single observation on the wrong axes (orient "v" vs "x").
            ptitprince.half_violinplot(x="group", y="value", data=frame[frame["group"].isin(dense)],
                                       order=levels, palette=[colours[g] for g in levels], bw=0.2,
                                       cut=0, scale="area", width=width, inner=None, offset=offset,
                                       ax=ax)
        for pos, g in enumerate(levels):
            if 0 < distinct.get(g, 0) < 2:
                y = frame.loc[frame["group"] == g, "value"].iloc[0]
                ax.plot([pos - offset - width / 2, pos - offset], [y, y], color=colours[g],
                        linewidth=3, solid_capstyle="butt")
        with seeded_jitter():
            sns.stripplot(data=frame, x="group", y="value", order=levels, hue="group", hue_order=levels,
                          palette=colours, legend=False, edgecolor="white", linewidth=0.6, size=3,
                          jitter=0.1, zorder=0, ax=ax)
        with warnings.catch_warnings():
            # seaborn 0.13.2 calls Axes.bxp(vert=...), deprecated in Matplotlib 3.11; only that one.
            warnings.filterwarnings("ignore", message=r"vert: bool was deprecated",
                                    module=r"seaborn\.categorical")
            sns.boxplot(data=frame, x="group", y="value", order=levels, color="black", fill=False,
                        width=0.15, zorder=10, showcaps=True, showfliers=True, saturation=1,
                        whiskerprops={"linewidth": 2}, flierprops={"marker": "d", "markersize": 4},
                        ax=ax)
        ticks = [f"{g} (n={k})" for g, k in zip(levels, n)]
        crowded = max(len(t) for t in ticks) * 0.075 * len(levels) > 0.9 * RAINCLOUD_FIGSIZE[0]
        ax.set_xticks(range(len(levels)), ticks, rotation=25 if crowded else 0,
                      ha="right" if crowded else "center", rotation_mode="anchor")
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel(group)
        ax.set_ylabel(f"{ylabel} (log scale)" if log_y else ylabel)
        if log_y:
            _log10_ticks(ax)
        fig.suptitle(_title(title, synthetic))
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


def fold_balance_figure(tests: pd.DataFrame, path: Path, synthetic: bool, alpha: float = 0.05,
                        dpi: int = DEFAULT_DPI, title: str = "Fold balance: per-fold test p-values") -> None:
    """p-value of each fold's balance test, one panel per test, folds grouped by level.

    ``tests`` has columns level, fold, test, statistic, p_value, one row per (level, fold, test).
    Known levels and tests come first in their canonical order, others after in order of
    appearance. A NaN p-value is marked "n/a". Dashed line: ``alpha``.
    """
    path = _png_path(path)
    _check_dpi(dpi)
    missing = [c for c in FOLD_BALANCE_COLUMNS if c not in tests.columns]
    if missing:
        raise ValueError(f"fold_balance_figure: missing columns {missing}")
    if tests.empty:
        raise ValueError("fold_balance_figure: no rows")
    if not 0 < alpha < 1:
        raise ValueError(f"fold_balance_figure: alpha must be in (0, 1), got {alpha}")
    frame = tests.loc[:, list(FOLD_BALANCE_COLUMNS)].copy()
    frame["level"] = frame["level"].astype(str)
    frame["test"] = frame["test"].astype(str)
    frame["p_value"] = pd.to_numeric(frame["p_value"], errors="raise").astype(float)
    duplicated = frame.duplicated(["level", "fold", "test"])
    if duplicated.any():
        first = frame.loc[duplicated, ["level", "fold", "test"]].iloc[0].tolist()
        raise ValueError(f"fold_balance_figure: duplicate row for (level, fold, test) = {first}")
    p = frame["p_value"].dropna()
    if ((p < 0) | (p > 1)).any():
        raise ValueError("fold_balance_figure: p_value outside [0, 1]")
    test_names = _canonical(frame["test"], TEST_ORDER)
    levels = _canonical(frame["level"], LEVEL_ORDER)
    folds = _sorted_folds(frame["fold"])
    colours = dict(zip(folds, _cycle(sns.color_palette("tab10"), len(folds))))
    span = 0.7
    step = span / len(folds)
    shift = {f: -span / 2 + step * (i + 0.5) for i, f in enumerate(folds)}

    figsize = _fold_balance_figsize(len(test_names))
    fig, axes = _new_figure(figsize, synthetic, ncols=len(test_names), sharey=True)
    axes = np.atleast_1d(axes)
    try:
        for ax, test in zip(axes, test_names):
            rows = frame[frame["test"] == test]
            for _, row in rows.iterrows():
                x = levels.index(row["level"]) + shift[row["fold"]]
                pv = row["p_value"]
                if math.isnan(pv):
                    ax.text(x, alpha + 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7,
                            color="0.4")
                    continue
                colour = colours[row["fold"]]
                ax.vlines(x, 0, pv, color=colour, linewidth=1.5, alpha=0.6)
                ax.plot([x], [pv], marker="o", markersize=6, color=colour, clip_on=False,
                        markeredgecolor="black" if pv < alpha else colour, zorder=3)
            ax.axhline(alpha, linestyle="--", color="0.25", linewidth=1)
            ax.set_ylim(0, 1)
            ax.set_xlim(-0.5, len(levels) - 0.5)
            ax.set_xticks(range(len(levels)), [LEVEL_NAMES.get(lv, lv) for lv in levels])
            ax.set_title(TEST_NAMES.get(test, test), fontsize=10)
            ax.grid(axis="y", color="0.9", linewidth=0.8)
            ax.set_axisbelow(True)
        axes[0].set_ylabel("p-value")
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colours[f],
                          label=f"fold {f}") for f in folds]
        handles.append(Line2D([], [], linestyle="--", color="0.25", label=f"α = {alpha:g}"))
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=6, color="white",
                              markeredgecolor="black", label="p < α"))
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        fig.suptitle(_title(title=title, synthetic=synthetic))
        _save(fig, path, dpi)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def seeded_jitter(seed: int = 0):
    """seaborn's stripplot jitters points with NumPy's global random state: seed it for the call (and
    put the caller's state back) so that a figure is as reproducible as the table it shows."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _title(title: str, synthetic: bool) -> str:
    return f"{title}{SYNTHETIC_SUFFIX}" if synthetic else title


def _fold_balance_figsize(n_tests: int) -> tuple[float, float]:
    return (FOLD_PANEL_WIDTH * n_tests + FOLD_LEGEND_WIDTH, FOLD_HEIGHT)


def _new_figure(figsize, synthetic: bool, **subplots):
    """Figure with constrained layout; a synthetic one gets the grey footnote in a reserved strip."""
    fig, axes = plt.subplots(figsize=figsize, layout="constrained", **subplots)
    if synthetic:
        bottom = _FOOTNOTE_INCHES / figsize[1]
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
        fig.text(0.01, bottom / 2, SYNTHETIC_NOTE, ha="left", va="center", fontsize=8,
                 color="0.45", style="italic")
    return fig, axes


def _save(fig, path: Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` as PNG atomically (:func:`strokeseg.workdir.atomic_path`)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    log.debug("wrote %s", path)


def _png_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: figures are written as PNG; use a .png name")
    return path


def _check_dpi(dpi) -> None:
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or dpi <= 0:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")


def _cycle(colours, n: int) -> list:
    return [colours[i % len(colours)] for i in range(n)]


def _canonical(column: pd.Series, known: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(column))
    return [k for k in known if k in seen] + [s for s in seen if s not in known]


def _sorted_folds(column: pd.Series) -> list:
    folds = list(dict.fromkeys(column))
    try:
        return sorted(folds, key=float)
    except (TypeError, ValueError):
        return sorted(folds, key=str)


def _fmt_tick(value: float) -> str:
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _log10_ticks(ax) -> None:
    """Label a y axis that holds log10 values with the original values (1-2-5 if < 2 decades)."""
    lo, hi = ax.get_ylim()
    decades = range(math.floor(lo) - 1, math.ceil(hi) + 1)
    majors = [float(e) for e in decades if lo <= e <= hi]
    minor_steps = range(2, 10)
    if len(majors) < 3:
        majors = sorted(majors + [e + math.log10(k) for e in decades for k in (2, 5)
                                  if lo <= e + math.log10(k) <= hi])
        minor_steps = (3, 4, 6, 7, 8, 9)
    minors = [e + math.log10(k) for e in decades for k in minor_steps if lo <= e + math.log10(k) <= hi]
    ax.yaxis.set_major_locator(FixedLocator(majors))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: _fmt_tick(10.0 ** y)))
    ax.yaxis.set_minor_locator(FixedLocator(minors))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(lo, hi)


def comparison_raincloud(scores: pd.DataFrame, path, synthetic: bool, metric: str = "dice",
                         model_order: Sequence[str] | None = None, title: str | None = None,
                         model_column: str = "model", dpi: int | None = None) -> None:
    """Raincloud of per-subject ``metric`` per model, for one plane (:func:`raincloud_figure`).

    ``title`` defaults to "Per-subject <metric> by model"; the synthetic marker is added as on every
    figure. If ``scores`` has a ``plane`` column it must hold a single plane: mixing planes would pool
    different subjects' slices into one cloud.
    """
    missing = [c for c in (model_column, metric) if c not in scores.columns]
    if missing:
        raise ValueError(f"comparison_raincloud: missing columns {missing} (have {list(scores.columns)})")
    if "plane" in scores.columns and scores["plane"].nunique(dropna=False) > 1:
        raise ValueError("comparison_raincloud: scores hold several planes "
                         f"{list(dict.fromkeys(scores['plane']))}; draw one figure per plane")
    kwargs = {} if dpi is None else {"dpi": dpi}
    title = f"Per-subject {metric} by model" if title is None else title
    raincloud_figure(scores, group=model_column, value=metric, title=title, ylabel=metric, path=Path(path),
                     synthetic=synthetic, order=model_order, **kwargs)

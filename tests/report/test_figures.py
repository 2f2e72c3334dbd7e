"""Figures: written atomically as PNG of the expected size, labelled correctly, never leaked."""
from __future__ import annotations

import math
import os
import warnings

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from strokeseg import workdir
from strokeseg.protocol.bins import assign_bins, bin_labels
from strokeseg.report import figures

DPI = 30  # small: the size check scales with it and the suite stays fast
EDGES = (0, 5_000, 30_000, 60_000, 100_000, 200_000, math.inf)
TESTS = ("mannwhitney_fold_vs_rest", "mannwhitney_fold_vs_pool", "chi2_bins_fold_vs_rest")


# every test: no figure left open (figures are closed after saving)
pytestmark = pytest.mark.usefixtures("no_figure_leaks")


def sizes(n=80, seed=0):
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(np.log(13), np.log(500_000), n)).round()


def balance_table(p_of=lambda level, fold, test: 0.5):
    rows = [dict(level=level, fold=fold, test=test, statistic=1.0, p_value=p_of(level, fold, test))
            for level in ("axial", "3d", "sagittal", "coronal") for fold in range(1, 6) for test in TESTS]
    return pd.DataFrame(rows)


def draw_distribution(path, synthetic=True, dpi=DPI):
    v = sizes()
    figures.lesion_distribution_figure(v, assign_bins(v, EDGES), EDGES, "Lesion volume", "voxels",
                                       path, synthetic, dpi=dpi)


def draw_raincloud(path, synthetic=True, dpi=DPI):
    frame = pd.DataFrame({"split": ["80 %"] * 40 + ["20 %"] * 10, "v": sizes(50)})
    figures.raincloud_figure(frame, "split", "v", "Split", "voxels", path, synthetic, log_y=True,
                             dpi=dpi)


def draw_balance(path, synthetic=True, dpi=DPI):
    figures.fold_balance_figure(balance_table(), path, synthetic, dpi=dpi)


FIGURES = {
    "distribution": (draw_distribution, figures.DISTRIBUTION_FIGSIZE),
    "raincloud": (draw_raincloud, figures.RAINCLOUD_FIGSIZE),
    "balance": (draw_balance, figures._fold_balance_figsize(len(TESTS))),
}


def test_title_helper():
    assert figures._title("Dice", False) == "Dice"
    assert figures._title("Dice", True) == "Dice — SYNTHETIC cohort (not ATLAS)"


@pytest.mark.parametrize("name", FIGURES)
def test_png_written_with_expected_size_and_closed(tmp_path, name):
    draw, (width, height) = FIGURES[name]
    path = tmp_path / f"{name}.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no palette-without-hue or other warnings leak out
        draw(path)
    assert path.stat().st_size > 0
    image = mpimg.imread(path)
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left
    assert plt.get_fignums() == []


@pytest.mark.parametrize("name", FIGURES)
@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_label_in_title_and_footnote(tmp_path, saved_figures, name, synthetic):
    FIGURES[name][0](tmp_path / "f.png", synthetic=synthetic)
    (fig,) = saved_figures
    texts = [t.get_text() for t in fig.texts]
    assert fig.get_suptitle().endswith(figures.SYNTHETIC_SUFFIX) is synthetic
    assert (figures.SYNTHETIC_NOTE in texts) is synthetic


def test_dpi_is_honoured(tmp_path):
    path = tmp_path / "d.png"
    draw_distribution(path, dpi=2 * DPI)
    width, height = figures.DISTRIBUTION_FIGSIZE
    assert mpimg.imread(path).shape[:2] == (round(height * 2 * DPI), round(width * 2 * DPI))


def test_distribution_legend_lists_every_bin_with_counts(tmp_path, saved_figures):
    v = np.array([100.0, 200.0, 6_000.0, 250_000.0])
    figures.lesion_distribution_figure(v, assign_bins(v, EDGES), EDGES, "t", "voxels",
                                       tmp_path / "d.png", False, dpi=DPI)
    ax = saved_figures[0].axes[0]
    labels = bin_labels(EDGES)
    counts = [2, 1, 0, 0, 0, 1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"{lab}  (n={c})" for lab, c in zip(labels, counts)]
    assert "log scale" in ax.get_ylabel()


def test_distribution_rejects_bad_input(tmp_path):
    v = sizes(5)
    with pytest.raises(ValueError, match="bin indices"):
        figures.lesion_distribution_figure(v, [0, 1], EDGES, "t", "y", tmp_path / "d.png", False)
    with pytest.raises(ValueError, match="> 0"):
        figures.lesion_distribution_figure([0.0, 3.0], [0, 0], EDGES, "t", "y", tmp_path / "d.png", False)
    with pytest.raises(ValueError, match="PNG"):
        figures.lesion_distribution_figure(v, assign_bins(v, EDGES), EDGES, "t", "y", tmp_path / "d.pdf", False)
    assert list(tmp_path.iterdir()) == []


def test_raincloud_tick_labels_come_from_the_data(tmp_path, saved_figures):
    order = ["Dice before", "Dice after", "Precision before", "Precision after"]
    frame = pd.DataFrame({"metric": np.repeat(order, [5, 6, 7, 8]),
                          "value": np.random.default_rng(1).uniform(0.2, 0.9, 26)})
    figures.raincloud_figure(frame, "metric", "value", "Axial plane", "value", tmp_path / "r.png",
                             False, order=order, dpi=DPI)
    ax = saved_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "Dice before (n=5)", "Dice after (n=6)", "Precision before (n=7)", "Precision after (n=8)"]
    assert ax.get_ylabel() == "value"


def test_raincloud_single_value_and_empty_groups(tmp_path, saved_figures):
    frame = pd.DataFrame({"g": ["many"] * 20 + ["one"] + ["same"] * 3 + ["nan"],
                          "v": list(np.linspace(0.1, 0.9, 20)) + [0.5, 0.7, 0.7, 0.7, np.nan]})
    figures.raincloud_figure(frame, "g", "v", "t", "v", tmp_path / "r.png", True,
                             order=["many", "one", "same", "nan", "absent"], dpi=DPI)
    ax = saved_figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "many (n=20)", "one (n=1)", "same (n=3)", "nan (n=0)", "absent (n=0)"]
    low, high = ax.get_ylim()  # ptitprince's single-observation glitch would stretch y to ~1.3
    assert 0 < low < 0.1 and 0.9 < high < 1.0
    assert mpimg.imread(tmp_path / "r.png").size > 0


def test_raincloud_only_single_values(tmp_path):
    frame = pd.DataFrame({"g": ["a", "b"], "v": [1.0, 2.0]})
    figures.raincloud_figure(frame, "g", "v", "t", "v", tmp_path / "r.png", False, dpi=DPI)
    assert (tmp_path / "r.png").stat().st_size > 0


def test_raincloud_rejects_groups_missing_from_order(tmp_path):
    frame = pd.DataFrame({"g": ["a", "b", "b"], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="not in order"):
        figures.raincloud_figure(frame, "g", "v", "t", "v", tmp_path / "r.png", False, order=["a"])
    with pytest.raises(ValueError, match="log_y"):
        figures.raincloud_figure(frame.assign(v=[0.0, 1.0, 2.0]), "g", "v", "t", "v",
                                 tmp_path / "r.png", False, log_y=True)


def test_fold_balance_panels(tmp_path, saved_figures):
    table = balance_table(lambda level, fold, test: 0.001 if (level, fold) == ("3d", 2) else 0.6)
    table.loc[0, "p_value"] = np.nan
    figures.fold_balance_figure(table, tmp_path / "b.png", False, alpha=0.01, dpi=DPI)
    fig = saved_figures[0]
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [figures.TEST_NAMES[t] for t in TESTS]
    for ax in axes:
        assert ax.get_ylim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3-D", "axial", "sagittal", "coronal"]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and tuple(dashed[0].get_ydata()) == (0.01, 0.01)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:5] == [f"fold {f}" for f in range(1, 6)] and "α = 0.01" in legend
    assert any(t.get_text() == "n/a" for t in axes[0].texts)


def test_fold_balance_rejects_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="missing columns"):
        figures.fold_balance_figure(balance_table().drop(columns="p_value"), tmp_path / "b.png", False)
    with pytest.raises(ValueError, match="duplicate"):
        figures.fold_balance_figure(pd.concat([balance_table()] * 2), tmp_path / "b.png", False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_raises_and_leaves_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            draw_distribution(folder / "d.png")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        draw_raincloud(tmp_path / "missing" / "r.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", FIGURES)
def test_failing_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, name):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    real_savefig = Figure.savefig

    def half_written(self, fname, **kwargs):
        real_savefig(self, fname, **kwargs)  # the temp file exists ...
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        FIGURES[name][0](path)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"] and path.read_bytes() == b"old"
    assert plt.get_fignums() == []


def test_failing_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(workdir.os, "replace", refuse)  # the rename of workdir.atomic_path
    with pytest.raises(OSError, match="rename refused"):
        draw_balance(tmp_path / "b.png")
    assert list(tmp_path.iterdir()) == []


def test_comparison_raincloud_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"plane": "axial", "model": np.repeat(["xnet", "rax"], 12),
                           "subject_name": [f"s{i}" for i in range(12)] * 2,
                           "dice": rng.uniform(0.2, 0.9, 24)})
    path = tmp_path / "axial_dice.png"
    figures.comparison_raincloud(scores, path, synthetic=True, model_order=["rax", "xnet"], dpi=30)
    assert path.stat().st_size > 0 and mpimg.imread(path).size > 0
    with pytest.raises(ValueError, match="several planes"):
        figures.comparison_raincloud(scores.assign(plane=["axial", "coronal"] * 12), path, True)
    with pytest.raises(ValueError, match="missing columns"):
        figures.comparison_raincloud(scores, path, True, metric="hd95")


@pytest.mark.parametrize("name", ["distribution", "raincloud"])
def test_jittered_points_are_the_same_in_every_run_and_leave_numpys_random_state_alone(tmp_path, name):
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    FIGURES[name][0](tmp_path / "a.png")
    assert np.random.random() == expected_next                  # the caller's random state is untouched
    np.random.random(17)                                         # any other state before the second figure
    FIGURES[name][0](tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()

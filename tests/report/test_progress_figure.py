"""The progress figure: four panels drawn from the history rows, written atomically as PNG, never leaked."""
from __future__ import annotations

import warnings

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from strokeseg.report.progress_figure import PROGRESS_FIGSIZE, progress_figure

DPI = 20   # small: the suite stays fast

pytestmark = pytest.mark.usefixtures("no_figure_leaks")


def history(epochs: int) -> pd.DataFrame:
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame({"epoch": epoch, "loss": 1.0 / epoch, "dice": 0.2 * epoch, "precision": np.nan,
                         "recall": np.nan, "val_loss": 1.1 / epoch, "val_dice": 0.1 * epoch,
                         "val_precision": np.nan, "val_recall": np.nan, "learning_rate": 1e-3 * 0.5 ** (epoch - 1),
                         "train_seconds": 2.0 * epoch, "epoch_seconds": 3.0 * epoch})


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_four_panels_show_the_history_and_the_png_is_written_atomically(tmp_path, epochs):
    frame = history(epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # one epoch (one point per line) draws without a warning
        fig = progress_figure(frame, tmp_path / "progress.png", "unet, axial, test fold 1", dpi=DPI)
    assert [p.name for p in tmp_path.iterdir()] == ["progress.png"]     # no temporary left beside it
    height, width = mpimg.imread(tmp_path / "progress.png").shape[:2]
    assert (width, height) == (PROGRESS_FIGSIZE[0] * DPI, PROGRESS_FIGSIZE[1] * DPI)

    loss, dice, lr, seconds = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Dice", "Learning rate", "Epoch time"]
    assert lr.get_yscale() == "log" and loss.get_yscale() == "linear"
    for ax, columns in ((loss, ["loss", "val_loss"]), (dice, ["dice", "val_dice"]), (lr, ["learning_rate"]),
                        (seconds, ["epoch_seconds"])):
        assert len(ax.get_lines()) == len(columns)
        for line, column in zip(ax.get_lines(), columns):
            np.testing.assert_array_equal(line.get_xdata(), frame["epoch"])
            np.testing.assert_array_equal(line.get_ydata(), frame[column])


def test_the_per_subject_dice_is_drawn_when_measured(tmp_path):
    measured = history(3).assign(val_subject_dice=[0.1, 0.3, 0.2])
    dice = progress_figure(measured, tmp_path / "progress.png", dpi=DPI).axes[1]
    np.testing.assert_array_equal(dice.get_lines()[-1].get_ydata(), measured["val_subject_dice"])
    unmeasured = history(3).assign(val_subject_dice=np.nan)      # training.selection=val_loss
    assert len(progress_figure(unmeasured, tmp_path / "progress.png", dpi=DPI).axes[1].get_lines()) == 2


def test_a_redrawn_figure_replaces_the_last_one(tmp_path):
    path = tmp_path / "progress.png"
    progress_figure(history(1), path, dpi=DPI)
    first = path.read_bytes()
    progress_figure(history(3), path, dpi=DPI)
    assert path.read_bytes() != first and [p.name for p in tmp_path.iterdir()] == ["progress.png"]

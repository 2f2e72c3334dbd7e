"""A training run's progress plot, redrawn after every epoch (as nnU-Net's ``progress.png``).

Four panels from the run's history rows (strokeseg.train.loop.HISTORY_COLUMNS): loss and Dice of the
training batches and of the inner validation, the learning rate (log scale) and the seconds per epoch.

The figure is a plain :class:`matplotlib.figure.Figure` drawn on an Agg canvas, not a pyplot figure:
it is never registered in pyplot's global list of open figures, so a training process that draws it
every epoch can not accumulate figures, and the process's pyplot backend is left as it is.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from strokeseg.workdir import atomic_path

PROGRESS_FIGSIZE = (10.0, 7.0)
DEFAULT_DPI = 100
# (panel title, y label, [(column, legend label)]); a column that is missing or never measured is left out
# (val_subject_dice: only with training.selection=subject_dice)
PANELS = (
    ("Loss", "loss", [("loss", "training"), ("val_loss", "inner validation")]),
    ("Dice", "Dice", [("dice", "training"), ("val_dice", "inner validation"),
                      ("val_subject_dice", "inner validation, per subject")]),
    ("Learning rate", "learning rate (log)", [("learning_rate", "at the epoch's first step")]),
    ("Epoch time", "seconds", [("epoch_seconds", "training + validation")]),
)


def progress_figure(history: pd.DataFrame, path: Path, title: str = "", dpi: int = DEFAULT_DPI) -> Figure:
    """Draw ``history`` (one row per finished epoch) into the PNG ``path``, written atomically; returns the
    figure (nothing to close: no pyplot figure is opened)."""
    # Fixed margins: a solver layout ("constrained") doubles the time of a figure drawn every epoch.
    fig = Figure(figsize=PROGRESS_FIGSIZE)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9 if title else 0.95, wspace=0.22, hspace=0.25)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    epochs = history["epoch"].to_numpy()
    for ax, (name, ylabel, columns) in zip(axes, PANELS):
        for column, label in columns:
            if column not in history or not history[column].notna().any():
                continue
            # markers: a run of one epoch is one point, which a line alone would not show
            ax.plot(epochs, history[column].to_numpy(dtype=float), marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[2].set_yscale("log")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))   # shared: epochs are whole numbers
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return fig

"""The models folder: what stage 10 exports and ``strokeseg predict`` (and the Docker image) reads.

Layout: ``<plane>.keras`` per plane, or per-fold sets ``<plane>_fold<k>.keras`` (an ensemble; read
by :func:`strokeseg.infer.inference.load_plane_models`; a 3-D model is the ``volume`` plane),
``config.json`` (the training run's config: predict normalises as training did), ``fusion.json``
(the :class:`strokeseg.infer.fusion.FusionSettings` stage 10 chose, its post-processing rule included,
plus where each model came from)
and ``grid_plan.json`` (the grid and channels the models were trained on).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from strokeseg.config import PLANES, VOLUME, Config, to_json
from strokeseg.contracts import BEST_FOLDS_CSV, RUNS_CSV, plane_folds_results_csv
from strokeseg.errors import InputError, StageOrderError, StrokesegError
from strokeseg.infer.fusion import FusionSettings
from strokeseg.workdir import atomic_write_text

CONFIG_JSON = "config.json"
FUSION_JSON = "fusion.json"


def model_file_name(plane: str, fold: int | None = None) -> str:
    """``<plane>.keras``, or ``<plane>_fold<k>.keras`` for a member of a fold ensemble."""
    return f"{plane}.keras" if fold is None else f"{plane}_fold{fold}.keras"


def export_models(folder: Path, sources: dict[str, list[tuple[int, Path]]], config: Config,
                  ensemble: bool) -> Path:
    """Copy each plane's model files (``sources``: plane -> [(fold, file)]) and write ``config.json``."""
    folder.mkdir()
    for plane, members in sources.items():
        for fold, path in members:
            shutil.copy2(path, folder / model_file_name(plane, fold if ensemble else None))
    atomic_write_text(folder / CONFIG_JSON, to_json(config))
    return folder


def write_fusion_settings(folder: Path, settings: FusionSettings, **provenance) -> Path:
    """``fusion.json``: the settings predict applies, and provenance it ignores."""
    path = Path(folder) / FUSION_JSON
    atomic_write_text(path, settings.to_json(**provenance))
    return path


def fusion_settings(folder: Path) -> FusionSettings | None:
    """The folder's ``fusion.json`` settings, or None when it has none."""
    path = Path(folder) / FUSION_JSON
    return FusionSettings.from_json(path) if path.is_file() else None


# ------------------------------------------------------------------ stage 08's models, for stage 10
def trained_models(training_dir: Path, model: str, ensemble: bool,
                   planes: tuple[str, ...] = PLANES) -> dict[str, list[tuple[int, str]]]:
    """Per plane of the study, the (fold, model file relative to ``08_training``) pairs stage 10 uses: the
    best fold of ``best_folds.csv``, or with ``ensemble`` every fold in ``runs.csv`` (sorted by fold)."""
    from strokeseg.workdir import read_csv

    name = RUNS_CSV if ensemble else BEST_FOLDS_CSV
    table = read_csv(training_dir / name)
    table = table[table["model"] == model]
    chosen = {}
    for plane in planes:
        rows = table[table["plane"] == plane].sort_values("fold")
        if rows.empty and plane == VOLUME:
            raise StageOrderError(f"{training_dir / name}: no {model} runs; train the 3-D model first (stage 08's "
                                  f"training.model, or stage 09's comparison.models)")
        if rows.empty:
            raise StageOrderError(f"{training_dir / name}: no {model} model for the {plane} plane; stage 10 "
                                  f"fuses the study's planes, rerun 08_training with all of "
                                  f"training.planes={list(planes)}")
        members = [(int(r.fold), str(r.model_file)) for r in rows.itertuples()]
        for _, path in members:
            if not (training_dir / path).is_file():
                raise InputError(training_dir / path, "model file not found (listed in " + name + ")")
        chosen[plane] = members
    return chosen


def cross_validation_weights(training_dir: Path, chosen: dict[str, list[tuple[int, str]]],
                             ensemble: bool) -> dict[str, float]:
    """weighted_mean weights: each plane's cross-validation subject-3-D Dice from stage 08's fold table
    (the chosen fold's row; with ``ensemble`` the All row, the mean over folds)."""
    from strokeseg.workdir import read_csv

    weights = {}
    for plane, members in chosen.items():
        path = training_dir / plane_folds_results_csv(plane)
        table = read_csv(path, dtype={"fold": str})
        wanted = "All" if ensemble else str(members[0][0])
        row = table[(table["evaluation"] == "subject_3d") & (table["fold"] == wanted)]
        if row.empty or not np.isfinite(row["dice_mean"].iloc[0]):
            raise InputError(path, f"no subject_3d Dice for fold {wanted}")
        weights[plane] = float(row["dice_mean"].iloc[0])
    if sum(weights.values()) <= 0:
        raise StrokesegError(f"weighted_mean: every plane's cross-validation Dice is 0 ({weights}); "
                             "use --fusion mean")
    return weights

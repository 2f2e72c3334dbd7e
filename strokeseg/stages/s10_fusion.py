"""Stage 10: tri-planar inference and fusion of every held-out volume, 3-D evaluation, tables, figures.

For each subject of the 20 % hold-out (``03_convert/holdout.csv``; every one, none dropped —
upstream silently left out 20 small-lesion subjects, reference/upstream-raxnet.md §11.4, §14.7):
read T1 and mask, normalise once (``convert`` of the recorded config, as stage 03 did), predict
every slice of the three planes in batches with stage 08's models and crop back exactly
(:mod:`strokeseg.infer.inference`), fuse the three probability volumes (:mod:`strokeseg.infer.fusion`),
optionally drop small components, and score each single plane in 3-D (probability > 0.5) and the
fused mask with :func:`strokeseg.evaluate.volume_metrics.subject_metrics` (ATLAS rules: Dice of two empty masks
= 1, 6-connectivity for lesion counts, HD95 in mm). One subject's volumes are in memory at a time.

Models (from ``08_training``, the model stage 08 trained, ``training.model``):

- default: per plane, the fold of ``best_folds.csv`` (chosen on the cross-validation test folds,
  never on the hold-out);
- ``ensemble=True``: per plane, the mean probability of every fold model in ``runs.csv``.

Fusion rules (``fusion``): ``mean`` (default, upstream's soft average, fused = mean ≥ threshold),
``majority`` (≥ 2 of 3 planes with probability > threshold) and ``weighted_mean``, whose weight of a
plane is stage 08's cross-validation subject-3-D Dice of that plane (``<plane>_folds_results.csv``,
evaluation ``subject_3d``): the chosen fold's row by default, the ``All`` row (mean over folds)
with ``ensemble``. Neither looks at the hold-out.

``min_lesion_voxels``: ``None``/0 keeps every component; N removes 6-connected components smaller
than N voxels; ``"auto"`` chooses N among :data:`DEFAULT_CANDIDATES` with
:func:`strokeseg.infer.fusion.choose_min_component_size` (highest mean Dice, ties → the smallest) on
out-of-fold predictions of the cross-validation subjects: for every fold k that stage 08 trained
for all three planes, the three fold-k models predict the fold-k test subjects from the stage-03
slice stores, fused exactly as the hold-out is (same rule, threshold, weights, flip TTA). The
hold-out is never read for this. (An ensemble's members saw each other's test folds, so the
out-of-fold predictions are always single fold models.)

Outputs under ``10_fusion/``:

- ``subjects.csv``: one row per (subject, mask), mask ∈ axial, sagittal, coronal, fused, with the
  subject's ``volume_bin`` (index) and ``volume_bin_label`` and every metric of
  :data:`strokeseg.evaluate.volume_metrics.METRIC_KEYS`;
- ``summary.csv``: per mask, n and mean, std (ddof 1) and median of each metric;
- ``fusion_gain.csv``: per plane and metric, the plane's 3-D score against the fused mask's on the
  same subjects: means, mean and median of ``fused − plane``, which direction is better, and the
  paired two-sided Wilcoxon signed-rank test (:func:`strokeseg.evaluate.tables.paired_wilcoxon`);
- ``by_volume_bin.csv``: per mask and each of the configured 3-D lesion-volume bins (all of them,
  empty ones with n = 0): n, mean, std and median of the main metrics;
- ``masks/<subject>_fused_mask.nii.gz``: uint8 {0, 1}, the input T1's affine and header;
- with ``save_probabilities``: ``probabilities/<subject>_<plane>_probability.nii.gz`` and
  ``<subject>_fused_probability.nii.gz``, **uint8 = round(255 · probability)** (divide by 255;
  about 40× smaller than float32 for 1/255 resolution); the fused map is the (weighted) mean
  probability (also for ``majority``, whose mask comes from votes);
- ``models/``: ready to mount for ``strokeseg predict --models``: ``axial.keras``,
  ``sagittal.keras``, ``coronal.keras`` (copies of the chosen fold models) or with ``ensemble``
  ``<plane>_fold<k>.keras``, plus ``config.json`` (this run's config: predict reads its
  ``convert`` section to normalise the same way) and ``fusion.json`` (rule, threshold, weights,
  minimum lesion size, flip TTA of this run);
- ``min_lesion_voxels.csv`` and ``cv_subjects.csv`` (with ``"auto"``): the mean cross-validation
  Dice of every candidate size with the chosen one marked, and the subjects (and folds) it used;
- figures: ``dice_before_after_fusion.png`` (per-plane 3-D Dice vs the fused mask),
  ``fused_metrics_3d.png`` (fused 3-D Dice, precision, recall), ``overlays/<subject>_overlay.png``
  (``overlays`` subjects spread over the fused-Dice ranking, tri-planar through the lesion's centre
  of mass) and ``fusion_3d_view.png`` (surface voxels of fused vs ground truth, the median subject).

Every option is recorded in ``manifest.json`` (``options``, ``weights``, ``min_lesion_voxels``,
``models``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from strokeseg.config import PLANES, Config, apply_overrides, to_json
from strokeseg.errors import InputError, StageOrderError, StrokesegError
from strokeseg.workdir import StageWriter, is_synthetic_run, read_csv, require_stage, stage_config, stage_dir, write_csv

log = logging.getLogger(__name__)

STAGE = "10_fusion"
FUSED = "fused"
MASK_ORDER = (*PLANES, FUSED)
MASKS_DIR, PROBABILITIES_DIR, OVERLAYS_DIR, MODELS_DIR = "masks", "probabilities", "overlays", "models"
SUBJECTS_CSV, SUMMARY_CSV, GAIN_CSV, BINS_CSV = "subjects.csv", "summary.csv", "fusion_gain.csv", "by_volume_bin.csv"
SIZES_CSV, CV_SUBJECTS_CSV = "min_lesion_voxels.csv", "cv_subjects.csv"
FUSION_JSON = "fusion.json"
SINGLE_PLANE_THRESHOLD = 0.5        # a single plane's 3-D mask: probability > 0.5
CONNECTIVITY = 6                     # ATLAS: lesion counting and component removal
DEFAULT_CANDIDATES = (0, 5, 10, 20, 50, 100, 200, 500, 1000)
PROBABILITY_ENCODING = "uint8 = round(255 * probability)"
SUMMARY_METRICS = ("dice", "precision", "recall", "volume_difference_voxels", "volume_difference_ml",
                   "lesion_count_difference", "lesionwise_f1", "hd95_mm")
BIN_METRICS = ("dice", "precision", "recall", "lesionwise_f1", "hd95_mm", "volume_difference_ml")
# metric -> which direction is better (for fusion_gain.csv)
GAIN_METRICS = {"dice": "higher", "precision": "higher", "recall": "higher", "lesionwise_f1": "higher",
                "hd95_mm": "lower", "volume_difference_ml": "lower", "lesion_count_difference": "lower"}
HOLDOUT_COLUMNS = ("subject_name", "volume_bin", "t1w", "mask")


@dataclass(frozen=True)
class FusionOptions:
    """How stage 10 predicts, fuses and reports (command-line options, recorded in the manifest)."""
    fusion: str = "mean"
    threshold: float = 0.5
    ensemble: bool = False
    flip_tta: bool = False
    min_lesion_voxels: int | str | None = None      # None/0: keep all; N; "auto"
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    overlays: int = 3
    save_probabilities: bool = False
    batch_size: int | None = None                    # None: training.eval_batch_size

    def checked(self) -> "FusionOptions":
        from strokeseg.infer.fusion import FUSION_RULES

        if self.fusion not in FUSION_RULES:
            raise StrokesegError(f"fusion rule {self.fusion!r} is not one of {FUSION_RULES}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise StrokesegError(f"fusion threshold must be in [0, 1], got {self.threshold}")
        size = self.min_lesion_voxels
        if isinstance(size, str) and size != "auto":
            raise StrokesegError(f"min_lesion_voxels must be 'auto' or a whole number >= 0, got {size!r}")
        if not isinstance(size, (str, type(None))) and (isinstance(size, bool) or int(size) != size or size < 0):
            raise StrokesegError(f"min_lesion_voxels must be 'auto' or a whole number >= 0, got {size!r}")
        if not self.candidates or any(int(c) != c or c < 0 for c in self.candidates) \
                or len(set(self.candidates)) != len(self.candidates):
            raise StrokesegError(f"candidate sizes must be distinct whole numbers >= 0, got {self.candidates}")
        if self.overlays < 0:
            raise StrokesegError(f"overlays must be >= 0, got {self.overlays}")
        if self.batch_size is not None and self.batch_size < 1:
            raise StrokesegError(f"batch size must be >= 1, got {self.batch_size}")
        return self


def starting_config(workdir: Path, overrides: Iterable[str] = ()) -> Config:
    """The config stage 08 recorded (stage 09 is optional), plus overrides."""
    return apply_overrides(stage_config(workdir, "08_training"), overrides).validate()


def run(workdir: Path, config: Config, progress: bool = True, fusion: str = "mean", threshold: float = 0.5,
        ensemble: bool = False, flip_tta: bool = False, min_lesion_voxels: int | str | None = None,
        candidates: Iterable[int] = DEFAULT_CANDIDATES, overlays: int = 3, save_probabilities: bool = False,
        batch_size: int | None = None) -> Path:
    options = FusionOptions(fusion, float(threshold), bool(ensemble), bool(flip_tta), min_lesion_voxels,
                            tuple(int(c) for c in candidates), int(overlays), bool(save_probabilities),
                            batch_size).checked()
    training_dir = require_stage(workdir, "08_training")
    convert_dir = require_stage(workdir, "03_convert")
    folds = read_csv(require_stage(workdir, "04_cross_validation") / "folds.csv")
    holdout = _holdout(convert_dir)
    model = config.training.model
    batch = options.batch_size or config.training.eval_batch_size
    chosen = plane_model_files(training_dir, model, options.ensemble)
    weights = plane_weights(training_dir, chosen, options.ensemble) if options.fusion == "weighted_mean" else None
    grids = {plane: _store_grid(convert_dir, plane) for plane in PLANES}
    synthetic = is_synthetic_run(workdir)

    with StageWriter(workdir, STAGE, config, synthetic=synthetic) as out:
        models_dir = export_models(out.path / MODELS_DIR, training_dir, chosen, config, options, weights)
        predictors = _holdout_predictors(models_dir, options.ensemble, grids, config.convert.canvas_multiple, batch)

        min_size = 0
        if options.min_lesion_voxels == "auto":
            # A fold model already loaded for the hold-out (default mode) is reused, not loaded twice.
            loaded = {} if options.ensemble else {(p, chosen[p][0][0]): predictors[p] for p in PLANES}
            scores, used, min_size = choose_min_lesion_voxels(
                training_dir, convert_dir, folds, model, config, options, weights, batch, progress, loaded)
            write_csv(scores, out.path / SIZES_CSV)
            write_csv(used, out.path / CV_SUBJECTS_CSV)
            _update_fusion_json(models_dir, min_size)
        elif options.min_lesion_voxels is not None:
            min_size = int(options.min_lesion_voxels)

        (out.path / MASKS_DIR).mkdir()
        if options.save_probabilities:
            (out.path / PROBABILITIES_DIR).mkdir()
        rows = []
        for subject in _progress(holdout.itertuples(index=False), len(holdout), progress):
            rows += _evaluate_subject(subject, predictors, grids, config, options, weights, min_size, batch, out.path)
        subjects = _subjects_frame(rows, holdout, config)

        write_csv(subjects, out.path / SUBJECTS_CSV)
        write_csv(summary(subjects), out.path / SUMMARY_CSV)
        write_csv(fusion_gain(subjects), out.path / GAIN_CSV)
        write_csv(by_volume_bin(subjects, config.bins.volume_edges), out.path / BINS_CSV)
        _figures(subjects, holdout, out.path, synthetic, options, config)

        out.extra.update({
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
            "batch_size": batch, "model": model, "weights": weights, "min_lesion_voxels": min_size,
            "n_subjects": int(len(holdout)), "single_plane_threshold": SINGLE_PLANE_THRESHOLD,
            "connectivity": CONNECTIVITY,
            "models": {p: [{"fold": f, "source": f"08_training/{path}"} for f, path in members]
                       for p, members in chosen.items()},
            "probability_encoding": PROBABILITY_ENCODING if options.save_probabilities else None,
        })
    return stage_dir(workdir, STAGE)


# ------------------------------------------------------------------------------------ inputs
def _holdout(convert_dir: Path) -> pd.DataFrame:
    path = convert_dir / "holdout.csv"
    holdout = read_csv(path)
    missing = [c for c in HOLDOUT_COLUMNS if c not in holdout.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    if holdout.empty:
        raise InputError(path, "no hold-out subjects")
    if holdout["subject_name"].duplicated().any():
        twice = holdout.loc[holdout["subject_name"].duplicated(), "subject_name"].iloc[0]
        raise InputError(path, f"subject listed twice: {twice}")
    return holdout.sort_values("subject_name", kind="stable").reset_index(drop=True)


def plane_model_files(training_dir: Path, model: str, ensemble: bool) -> dict[str, list[tuple[int, str]]]:
    """Per plane, the (fold, model file relative to ``08_training``) pairs to use: the best fold of
    ``best_folds.csv``, or with ``ensemble`` every fold in ``runs.csv`` (sorted by fold)."""
    name = "runs.csv" if ensemble else "best_folds.csv"
    table = read_csv(training_dir / name)
    table = table[table["model"] == model]
    chosen = {}
    for plane in PLANES:
        rows = table[table["plane"] == plane].sort_values("fold")
        if rows.empty:
            raise StageOrderError(f"{training_dir / name}: no {model} model for the {plane} plane; stage 10 "
                                  f"fuses three planes, rerun 08_training with all of training.planes={list(PLANES)}")
        members = [(int(r.fold), str(r.model_file)) for r in rows.itertuples()]
        for _, path in members:
            if not (training_dir / path).is_file():
                raise InputError(training_dir / path, "model file not found (listed in " + name + ")")
        chosen[plane] = members
    return chosen


def plane_weights(training_dir: Path, chosen: dict[str, list[tuple[int, str]]], ensemble: bool) -> dict[str, float]:
    """weighted_mean weights: each plane's cross-validation subject-3-D Dice from stage 08's fold table
    (the chosen fold's row; with ``ensemble`` the All row, the mean over folds)."""
    weights = {}
    for plane, members in chosen.items():
        path = training_dir / f"{plane}_folds_results.csv"
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


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray


def _store_grid(convert_dir: Path, plane: str) -> _Grid:
    from strokeseg.data.stores import store_geometry

    geometry = store_geometry(convert_dir, plane)
    return _Grid(tuple(int(s) for s in geometry.volume_shape), np.asarray(geometry.raw["affine"], dtype=float))


# ------------------------------------------------------------------------------------ models
def export_models(folder: Path, training_dir: Path, chosen: dict[str, list[tuple[int, str]]], config: Config,
                  options: FusionOptions, weights: dict[str, float] | None) -> Path:
    """``models/``: ``<plane>.keras`` (or ``<plane>_fold<k>.keras`` with ensemble), ``config.json``, ``fusion.json``."""
    folder.mkdir()
    for plane, members in chosen.items():
        for fold, path in members:
            name = f"{plane}_fold{fold}.keras" if options.ensemble else f"{plane}.keras"
            shutil.copy2(training_dir / path, folder / name)
    (folder / "config.json").write_text(to_json(config))
    record = {"fusion": options.fusion, "threshold": options.threshold, "weights": weights,
              "flip_tta": options.flip_tta, "ensemble": options.ensemble, "min_lesion_voxels": 0,
              "single_plane_threshold": SINGLE_PLANE_THRESHOLD, "connectivity": CONNECTIVITY,
              "model": config.training.model,
              "sources": {p: [{"fold": f, "file": f"08_training/{path}"} for f, path in m] for p, m in chosen.items()}}
    if isinstance(options.min_lesion_voxels, int):
        record["min_lesion_voxels"] = int(options.min_lesion_voxels)
    (folder / FUSION_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return folder


def _update_fusion_json(models_dir: Path, min_size: int) -> None:
    path = models_dir / FUSION_JSON
    record = json.loads(path.read_text())
    record["min_lesion_voxels"] = int(min_size)
    record["min_lesion_voxels_chosen_on"] = "cross-validation out-of-fold predictions (stage 10 auto)"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _holdout_predictors(models_dir: Path, ensemble: bool, grids: dict[str, _Grid], multiple: int,
                        batch: int) -> dict:
    """Per plane, the :class:`strokeseg.infer.inference.PlanePredictor` of the exported models (loaded back
    through :func:`strokeseg.infer.inference.load_plane_models`, as ``strokeseg predict`` loads them)."""
    from strokeseg.infer import inference
    from strokeseg.data import planes

    canvases = {plane: planes.canvas_for(grid.shape, plane, multiple).shape for plane, grid in grids.items()}
    return inference.plane_predictors(inference.load_plane_models(models_dir, ensemble=ensemble,
                                                                  canvas_shapes=canvases), batch)


# ---------------------------------------------------------------------------- one hold-out subject
def _evaluate_subject(subject, predictors: dict, grids: dict[str, _Grid], config: Config, options: FusionOptions,
                      weights, min_size: int, batch: int, root: Path) -> list[dict]:
    from strokeseg.infer import fusion, inference
    from strokeseg.evaluate.volume_metrics import subject_metrics
    from strokeseg.data.nifti import load_mask, load_t1, same_affine, write_nifti

    name = str(subject.subject_name)
    t1, image = load_t1(subject.t1w)
    affine = np.asarray(image.affine, dtype=np.float64)
    grid = grids["axial"]
    if tuple(t1.shape) != grid.shape:
        raise InputError(subject.t1w, f"volume shape {tuple(t1.shape)} differs from the grid the models were "
                                      f"trained on {grid.shape} (03_convert stores)")
    if not same_affine(affine, grid.affine):
        raise InputError(subject.t1w, "affine differs from the grid the models were trained on (03_convert stores)")
    truth = load_mask(subject.mask, binarize=config.dataset.binarize_masks, shape=t1.shape, affine=affine,
                      allow_empty=True)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])

    probabilities = inference.volume_probabilities(t1, predictors, config.convert, batch, flip_tta=options.flip_tta)
    rows = []
    for plane in PLANES:
        pred = probabilities[plane] > SINGLE_PLANE_THRESHOLD
        rows.append({"subject_name": name, "mask": plane,
                     **subject_metrics(pred, truth, spacing, connectivity=CONNECTIVITY)})
    fused = _fuse(probabilities, options, weights, min_size)
    rows.append({"subject_name": name, "mask": FUSED,
                 **subject_metrics(fused, truth, spacing, connectivity=CONNECTIVITY)})
    write_nifti(root / MASKS_DIR / mask_file(name), fused, reference=image, dtype=np.uint8)
    if options.save_probabilities:
        maps = dict(probabilities)
        maps[FUSED] = fusion.fused_probability(probabilities, options.fusion,
                                               weights if options.fusion == "weighted_mean" else None)
        for key, probability in maps.items():
            write_nifti(root / PROBABILITIES_DIR / f"{name}_{key}_probability.nii.gz", _as_uint8(probability),
                        reference=image, dtype=np.uint8)
    return rows


def _fuse(probabilities: dict[str, np.ndarray], options: FusionOptions, weights, min_size: int) -> np.ndarray:
    from strokeseg.infer import fusion

    return fusion.fused_mask(probabilities, options.fusion, options.threshold,
                             weights if options.fusion == "weighted_mean" else None, min_size, CONNECTIVITY)


def mask_file(subject: str) -> str:
    return f"{subject}_fused_mask.nii.gz"


def _as_uint8(probability: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(probability, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _progress(items, total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(items, total=total, desc="10 fusion", unit="subject", disable=not progress, leave=False)


# -------------------------------------------------------------------- min lesion size (cross-validation)
def choose_min_lesion_voxels(training_dir: Path, convert_dir: Path, folds: pd.DataFrame, model: str, config: Config,
                             options: FusionOptions, weights, batch: int, progress: bool = True,
                             loaded: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(scores per candidate, subjects used, chosen size) from out-of-fold fused predictions of the
    cross-validation subjects (module docstring); the hold-out is never read. ``loaded``: predictors
    already built, keyed by (plane, fold)."""
    from strokeseg.infer import fusion

    runs = read_csv(training_dir / "runs.csv")
    runs = runs[runs["model"] == model]
    per_plane = [set(runs.loc[runs["plane"] == plane, "fold"].astype(int)) for plane in PLANES]
    common = sorted(set.intersection(*per_plane))
    if not common:
        raise StrokesegError(f"{training_dir / 'runs.csv'}: no fold was trained for all three planes, so "
                             "--min-lesion-voxels auto has no out-of-fold fused predictions; give a size instead")
    used = folds[folds["fold"].astype(int).isin(common)][["subject_name", "fold"]]
    used = used.sort_values(["fold", "subject_name"], kind="stable").reset_index(drop=True)
    if used.empty:
        raise StrokesegError(f"folds {common} have no subjects in 04_cross_validation/folds.csv")
    candidates = list(options.candidates)
    totals = np.zeros(len(candidates), dtype=np.float64)
    count = 0

    def recorded():
        # The cases stream through choose_min_component_size one subject at a time (memory bounded);
        # each one's per-candidate Dice is recorded on the way for min_lesion_voxels.csv.
        nonlocal count
        for case in _cv_cases(training_dir, convert_dir, runs, used, config, options, weights, batch, progress,
                              loaded or {}):
            dice = fusion.component_size_scores([case], candidates, connectivity=CONNECTIVITY)
            totals[:] += [dice[c] for c in candidates]
            count += 1
            yield case

    chosen = int(fusion.choose_min_component_size(recorded(), candidates, connectivity=CONNECTIVITY))
    table = pd.DataFrame({"min_lesion_voxels": candidates, "mean_dice": totals / max(count, 1),
                          "n_subjects": count, "chosen": [size == chosen for size in candidates]})
    log.info("min lesion size %d voxels chosen on %d cross-validation subjects (folds %s)", chosen, count, common)
    return table, used, chosen


def _cv_cases(training_dir: Path, convert_dir: Path, runs: pd.DataFrame, used: pd.DataFrame, config: Config,
              options: FusionOptions, weights, batch: int, progress: bool,
              loaded: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(fused mask, truth) of each cross-validation subject, cropped to their union bounding box
    (component sizes and Dice are unchanged by the crop), one subject's volumes at a time."""
    from strokeseg.infer import inference
    from strokeseg.evaluate.folds import truth_volume
    from strokeseg.data.stores import SliceStore

    stores = {plane: SliceStore(convert_dir / plane) for plane in PLANES}
    bar = _progress(range(len(used)), len(used), progress)
    for fold, group in used.groupby("fold", sort=True):
        predictors = {}
        for plane in PLANES:
            if (plane, int(fold)) in loaded:
                predictors[plane] = loaded[(plane, int(fold))]
                continue
            path = runs.loc[(runs["plane"] == plane) & (runs["fold"].astype(int) == int(fold)), "model_file"].iloc[0]
            predictors[plane] = inference.plane_predictors(
                {plane: [inference.load_model(training_dir / path)]}, batch)[plane]
        for subject in group["subject_name"]:
            probabilities = {plane: _store_probability(stores[plane], subject, predictors[plane], config, options, batch)
                             for plane in PLANES}
            fused = _fuse(probabilities, options, weights, 0)
            del probabilities
            truth = truth_volume(stores["axial"], subject)
            yield _crop_pair(fused, truth)
            bar.update(1)
    bar.close()


def _store_probability(store, subject: str, predictor, config: Config, options: FusionOptions,
                       batch: int) -> np.ndarray:
    """One plane's probability volume of a cross-validation subject from its stage-03 store: the
    stored (normalised) slices are put back into a volume and predicted exactly as a hold-out volume
    (:func:`strokeseg.infer.inference.plane_probability`, flip TTA included)."""
    from strokeseg.infer import inference
    from strokeseg.data import planes

    rows = store.rows([subject] * store.n_slices, np.arange(store.n_slices))
    stack = store.canvas.crop(store.images_at(rows, channels=1)[..., 0])
    volume = np.ascontiguousarray(planes.from_stack(stack, store.plane))
    # volume_robust: the stored volume is the normalised volume itself; slice_max: re-normalising the
    # stored slices of their own plane gives them back (each slice's maximum is already 255).
    normalized = volume if config.convert.normalization == "volume_robust" else None
    return inference.plane_probability(predictor.predict, volume, store.plane, config.convert, predictor.channels,
                                       batch, flip_tta=options.flip_tta, normalized=normalized)


def _crop_pair(mask: np.ndarray, truth: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    union = (np.asarray(mask) > 0) | (np.asarray(truth) > 0)
    if not union.any():
        return np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8)
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + 1 + margin) for i in np.nonzero(union))
    return np.array(mask[box], dtype=np.uint8), np.array(truth[box], dtype=np.uint8)


# ---------------------------------------------------------------------------------------- tables
def _subjects_frame(rows: list[dict], holdout: pd.DataFrame, config: Config) -> pd.DataFrame:
    from strokeseg.protocol.bins import bin_labels
    from strokeseg.evaluate.volume_metrics import METRIC_KEYS

    labels = bin_labels(config.bins.volume_edges)
    frame = pd.DataFrame(rows)
    bins = holdout.set_index("subject_name")["volume_bin"].astype(int)
    frame.insert(1, "volume_bin", frame["subject_name"].map(bins).astype(int))
    frame.insert(2, "volume_bin_label",
                 frame["volume_bin"].map(lambda b: labels[b] if 0 <= b < len(labels) else str(b)))
    return frame[["subject_name", "volume_bin", "volume_bin_label", "mask", *METRIC_KEYS]]


def _in_mask_order(frame: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(MASK_ORDER)}
    return frame.sort_values("mask", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def summary(subjects: pd.DataFrame) -> pd.DataFrame:
    """Per mask (axial, sagittal, coronal, fused): n, mean, std (ddof 1), median of each metric."""
    from strokeseg.evaluate.tables import summary_table

    return _in_mask_order(summary_table(subjects, ["mask"], list(SUMMARY_METRICS)))


def fusion_gain(subjects: pd.DataFrame) -> pd.DataFrame:
    """Per plane and metric: the plane's 3-D score vs the fused mask's on the same subjects."""
    from strokeseg.evaluate.tables import paired_wilcoxon

    rows = []
    for metric, better in GAIN_METRICS.items():
        tests = paired_wilcoxon(subjects, reference=FUSED, metric=metric, model_column="mask", group_columns=[])
        fused = subjects[subjects["mask"] == FUSED].set_index("subject_name")[metric]
        for test in tests.itertuples(index=False):
            plane = subjects[subjects["mask"] == test.model].set_index("subject_name")[metric]
            pairs = pd.concat([plane.rename("plane"), fused.rename("fused")], axis=1, join="inner").dropna()
            rows.append({"plane": test.model, "metric": metric, "better": better, "n_pairs": int(test.n_pairs),
                         "plane_mean": float(pairs["plane"].mean()) if len(pairs) else np.nan,
                         "fused_mean": float(pairs["fused"].mean()) if len(pairs) else np.nan,
                         # paired_wilcoxon's differences are plane − fused: the gain of fusion is minus that
                         "mean_difference": 0.0 - float(test.mean_difference),
                         "median_difference": 0.0 - float(test.median_difference),
                         "statistic": test.statistic, "p_value": test.p_value, "method": test.method})
    table = pd.DataFrame(rows)
    table["plane"] = pd.Categorical(table["plane"], categories=list(PLANES), ordered=True)
    table = table.sort_values(["plane"], kind="stable").reset_index(drop=True)
    table["plane"] = table["plane"].astype(str)
    return table


def by_volume_bin(subjects: pd.DataFrame, edges) -> pd.DataFrame:
    """Per mask and volume bin (every configured bin, empty ones with n = 0): n, mean/std/median."""
    from strokeseg.protocol.bins import bin_labels
    from strokeseg.evaluate.tables import summary_table

    labels = bin_labels(edges)
    table = summary_table(subjects, ["mask", "volume_bin"], list(BIN_METRICS))
    full = pd.MultiIndex.from_product([list(MASK_ORDER), range(len(labels))], names=["mask", "volume_bin"])
    present = [m for m in MASK_ORDER if m in set(subjects["mask"])]
    table = table.set_index(["mask", "volume_bin"]).reindex(full).loc[present].reset_index()
    table["n"] = table["n"].fillna(0).astype(int)
    table.insert(2, "volume_bin_label", table["volume_bin"].map(lambda b: labels[b]))
    return table


# --------------------------------------------------------------------------------------- figures
def _figures(subjects: pd.DataFrame, holdout: pd.DataFrame, root: Path, synthetic: bool, options: FusionOptions,
             config: Config) -> None:
    from strokeseg.report import fusion_figures as fusion_reports
    from strokeseg.data.nifti import load_mask, load_t1

    fusion_reports.before_after_raincloud(subjects, root / "dice_before_after_fusion.png", synthetic,
                                          rule=_rule_text(options))
    fusion_reports.fused_metrics_raincloud(subjects, root / "fused_metrics_3d.png", synthetic,
                                           title=f"Hold-out: per-subject 3-D metrics of the fused mask "
                                                 f"({_rule_text(options)})")
    fused = subjects[subjects["mask"] == FUSED]
    files = holdout.set_index("subject_name")
    picks = fusion_reports.overlay_subjects(fused, options.overlays)
    lesion = fused[(fused["truth_voxels"] > 0) | (fused["pred_voxels"] > 0)]
    view = fusion_reports.overlay_subjects(lesion if not lesion.empty else fused, 3)
    view_subject = view[len(view) // 2] if view else None
    if picks:
        (root / OVERLAYS_DIR).mkdir()
    for name in dict.fromkeys(picks + ([view_subject] if view_subject else [])):
        t1, image = load_t1(files.loc[name, "t1w"])
        truth = load_mask(files.loc[name, "mask"], binarize=config.dataset.binarize_masks, shape=t1.shape,
                          affine=image.affine, allow_empty=True)
        prediction = load_mask(root / MASKS_DIR / mask_file(name), allow_empty=True)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        dice = float(fused.loc[fused["subject_name"] == name, "dice"].iloc[0])
        if name in picks:
            fusion_reports.overlay_figure(t1, truth, prediction, root / OVERLAYS_DIR / f"{name}_overlay.png",
                                          synthetic, spacing,
                                          title=f"{name}: T1, ground truth and fused mask (3-D Dice {dice:.3f})")
        if name == view_subject:
            fusion_reports.lesion_3d_figure(truth, prediction, root / "fusion_3d_view.png", synthetic, spacing,
                                            title=f"{name}: fused mask vs ground truth, surface voxels "
                                                  f"(3-D Dice {dice:.3f}, median subject)")
        del t1, truth, prediction


def _rule_text(options: FusionOptions) -> str:
    text = {"mean": f"mean probability ≥ {options.threshold:g}",
            "majority": f"≥ 2 of 3 planes with p > {options.threshold:g}",
            "weighted_mean": f"weighted mean ≥ {options.threshold:g}"}[options.fusion]
    if options.ensemble:
        text += ", fold ensemble"
    if options.flip_tta:
        text += ", flip TTA"
    return text


# ------------------------------------------------------------------------- command line (strokeseg.cli)
def _size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 0, got {value!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 0, got {value!r}")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from strokeseg.infer.fusion import FUSION_RULES

    parser.add_argument("--fusion", choices=FUSION_RULES, default="mean",
                        help="mean: mean probability >= threshold (upstream's soft average); majority: >= 2 of "
                             "3 planes with probability > threshold; weighted_mean: planes weighted by their "
                             "stage-08 cross-validation 3-D Dice (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.5, help="fusion threshold (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true",
                        help="per plane, the mean of every stage-08 fold model (default: the best fold of "
                             "08_training/best_folds.csv)")
    parser.add_argument("--flip-tta", action="store_true",
                        help="left-right flip test-time augmentation (twice the prediction time)")
    parser.add_argument("--min-lesion-voxels", type=_size, default=None, metavar="auto|N",
                        help="remove fused lesions (6-connected) smaller than N voxels; 'auto' chooses N on the "
                             "cross-validation subjects' out-of-fold predictions, never the hold-out "
                             "(default: keep all)")
    parser.add_argument("--overlays", type=int, default=3, metavar="N",
                        help="tri-planar overlay figures for N subjects spread over the fused-Dice ranking "
                             "(default: %(default)s)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write the three plane probability maps and the fused one (uint8, "
                             "probability x 255)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per model call (default: training.eval_batch_size)")


def run_options(args: argparse.Namespace) -> dict:
    return {"fusion": args.fusion, "threshold": args.threshold, "ensemble": args.ensemble,
            "flip_tta": args.flip_tta, "min_lesion_voxels": args.min_lesion_voxels, "overlays": args.overlays,
            "save_probabilities": args.save_probabilities, "batch_size": args.batch_size}

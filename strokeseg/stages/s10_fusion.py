"""Stage 10: tri-planar inference and fusion of every held-out volume, 3-D evaluation, tables, figures.

For each subject of the 20 % hold-out (``03_convert/holdout.csv``; every one, none dropped —
upstream silently left out 20 small-lesion subjects, docs/upstream-raxnet.md §11.4, §14.7):
read its image channels and mask onto its plan grid (stage 01's grid plan), normalise once per
channel (``convert`` of the recorded config, as stage 03 did), predict every slice of the study's
planes in batches with stage 08's models and crop back exactly, fuse the probability volumes,
post-process them (:class:`strokeseg.infer.tri_planar.TriPlanarPredictor`, the code
``strokeseg predict`` runs), move the masks back to the subject's own grid and score each single
plane in 3-D (probability > 0.5) and the fused mask there (:mod:`strokeseg.evaluate.holdout`: ATLAS
rules, Dice of two empty masks = 1, 6-connectivity for lesion counts, HD95 in mm, or voxels where
the cohort's voxel size is not known). A one-plane study (slice folders) has nothing to fuse: its
"fused" rows are that plane after the threshold and component removal, and no fusion-gain table
is written. The models folder gets the grid plan, for ``strokeseg predict``. One subject's volumes
are in memory at a time. This module only
orchestrates: tables come from :mod:`strokeseg.evaluate.subject_tables`, figures from
:mod:`strokeseg.report.fusion_figures`, the models folder from :mod:`strokeseg.infer.models_folder`.

Models (from ``08_training``, the model stage 08 trained, ``training.model``):

- default: per plane, the fold of ``best_folds.csv`` (chosen on the cross-validation test folds,
  never on the hold-out);
- ``ensemble=True``: per plane, the mean probability of every fold model in ``runs.csv``.

Fusion rules (``fusion``): ``mean`` (default, upstream's soft average, fused = mean ≥ threshold),
``majority`` (≥ 2 of 3 planes with probability > threshold) and ``weighted_mean``, whose weight of a
plane is stage 08's cross-validation subject-3-D Dice of that plane (``<plane>_folds_results.csv``,
evaluation ``subject_3d``): the chosen fold's row by default, the ``All`` row (mean over folds)
with ``ensemble``. Neither looks at the hold-out.

Post-processing (``config.postprocess``, overridden by the options): ``rule`` ``none`` keeps every
component; ``min_size`` removes 6-connected components smaller than ``postprocess.min_lesion_voxels``
voxels (``--min-lesion-voxels N``); ``largest`` keeps the largest component only, the LGG U-Net's rule
(``--largest-component``); ``auto`` (``--min-lesion-voxels auto``) scores every size of
:data:`DEFAULT_CANDIDATES` and the largest-component rule with :mod:`strokeseg.infer.postprocessing`
and keeps the highest mean per-subject Dice (ties → the smallest size; ``largest`` only where strictly
better) on out-of-fold predictions of the cross-validation subjects: for every fold k that stage 08
trained for all three planes, the three fold-k models predict the fold-k test subjects from the
stage-03 slice stores, fused exactly as the hold-out is (same rule, threshold, weights, flip TTA).
The hold-out is never read for this. (An ensemble's members saw each other's test folds, so the
out-of-fold predictions are always single fold models.) The rule applied is written into
``models/fusion.json``, so ``strokeseg predict`` applies it too.

Outputs under ``10_fusion/``:

- ``subjects.csv``: one row per (subject, mask), mask ∈ axial, sagittal, coronal, fused, with the
  subject's ``volume_bin`` (index) and ``volume_bin_label`` and every metric of
  :data:`strokeseg.evaluate.volume_metrics.METRIC_KEYS`;
- ``summary.csv``: per mask, n and mean, std (ddof 1) and median of each metric;
- ``fusion_gain.csv``: per plane and metric, the plane's 3-D score against the fused mask's on the
  same subjects: means, mean and median of ``fused − plane``, which direction is better, and the
  paired two-sided Wilcoxon signed-rank test (:func:`strokeseg.evaluate.subject_tables.paired_comparison`);
- ``by_volume_bin.csv``: per mask and each of the configured 3-D lesion-volume bins (all of them,
  empty ones with n = 0): n, mean, std and median of the main metrics;
- ``dice_tiers.csv``: per mask and group (``all`` subjects; ``lesion``: those whose truth has a voxel,
  as the ISLES'22 3-D project reported "all" and "GT > 0" cases), n, mean and median Dice and the
  number of subjects per Dice tier (≥ 0.8, [0.6, 0.8), [0.4, 0.6), < 0.4;
  :func:`strokeseg.evaluate.subject_tables.dice_tiers`);
- where stage 01 located the lesions (cohorts in MNI space): ``by_location.csv``, per mask, grouping
  (``location_class``, ``hemisphere``: the subject's whole mask, stage 01's ``subject_locations.csv``)
  and group (every one, empty ones with n = 0; ``no lesion`` for lesion-free subjects): n and
  mean/std/median of Dice, precision, recall and lesion-wise F1
  (:mod:`strokeseg.evaluate.location_tables`); ``holdout_lesions.csv``, stage 01's row of every hold-out
  lesion (26-connected, largest first) with ``detected`` (the fused mask overlaps it by a voxel); and
  ``detection_by_location.csv``, per grouping and group: n lesions, detected, their share, median size;
- ``masks/<subject>_fused_mask.nii.gz``: uint8 {0, 1}, the input T1's affine and header;
- with ``save_probabilities``: ``probabilities/<subject>_<plane>_probability.nii.gz`` and
  ``<subject>_fused_probability.nii.gz``, **uint8 = round(255 · probability)** (divide by 255;
  about 40× smaller than float32 for 1/255 resolution); the fused map is the (weighted) mean
  probability (also for ``majority``, whose mask comes from votes);
- ``models/``: ready to mount for ``strokeseg predict --models``: ``axial.keras``,
  ``sagittal.keras``, ``coronal.keras`` (copies of the chosen fold models) or with ``ensemble``
  ``<plane>_fold<k>.keras``, plus ``config.json`` (this run's config: predict reads its
  ``convert`` section to normalise the same way) and ``fusion.json``
  (:class:`strokeseg.infer.fusion.FusionSettings`: rule, threshold, weights, minimum lesion size,
  largest component only, connectivity, flip TTA of this run, and where each model came from);
- ``min_lesion_voxels.csv`` and ``cv_subjects.csv`` (with ``auto``): the mean cross-validation Dice of
  every candidate (``rule`` ``min_size`` with its ``min_lesion_voxels``, and one ``largest`` row)
  with the chosen one marked, and the subjects (and folds) it used;
- figures: ``dice_before_after_fusion.png`` (per-plane 3-D Dice vs the fused mask),
  ``fused_metrics_3d.png`` (fused 3-D Dice, precision, recall), ``overlays/<subject>_overlay.png``
  (``overlays`` subjects spread over the fused-Dice ranking, tri-planar through the lesion's centre
  of mass) and ``fusion_3d_view.png`` (surface voxels of fused vs ground truth, the median subject).

**3-D models** (``unet3d``, ``attention_unet3d``; strokeseg.models.VOLUME_MODELS):

- when stage 08's model is 3-D, the study's one "plane" is ``volume``: each hold-out subject is
  predicted by Gaussian-weighted sliding windows, its "fused" rows are that mask after the threshold
  and component removal (as a one-plane study), and ``models/`` holds ``volume.keras``;
- ``--volume-model NAME`` (a 3-D model stage 09 trained, its best fold from ``09_comparison/
  best_folds.csv``, or every fold with ``--ensemble``) evaluates it beside the tri-planar fusion on the
  same hold-out subjects: ``subjects.csv`` gains the ``volume`` mask, and with ``--average`` the
  ``average`` mask (mean of the fused and the 3-D probability), both through the fused mask's
  threshold and component removal; ``volume_comparison.csv`` holds the paired Wilcoxon of each against
  the fused mask (columns as ``fusion_gain.csv``); ``models_3d/`` is a models folder for
  ``strokeseg predict`` with the 3-D model.

``auto`` chooses on the slice models' out-of-fold predictions, so it is for tri-planar studies only;
fixed sizes and ``largest`` work for every study.

Every option is recorded in ``manifest.json`` (``options``, ``fusion`` (the settings),
``min_lesion_voxels``, ``postprocess`` (the rule asked for, the one applied, the size), ``dice`` (the
fused mask's mean Dice over ``all`` and ``lesion`` subjects), ``models``).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from strokeseg.config import PLANES, VOLUME, Config, PostprocessConfig, apply_overrides
from strokeseg.contracts import (
    BY_LOCATION_CSV,
    BY_VOLUME_BIN_CSV,
    COMPARISON,
    CONVERT,
    CROSS_VALIDATION,
    DETECTION_BY_LOCATION_CSV,
    FOLDS_CSV,
    FUSION,
    FUSION_GAIN_CSV,
    HOLDOUT_CSV,
    HOLDOUT_LESIONS_CSV,
    MASKS_DIR,
    MODELS_DIR,
    RUNS_CSV,
    SUBJECTS_CSV,
    SUMMARY_CSV,
    TRAINING,
    fused_mask_file,
)
from strokeseg.errors import ConfigError
from strokeseg.evaluate import location_tables
from strokeseg.evaluate.holdout import AVERAGE, FUSED, SINGLE_PLANE_THRESHOLD, VOLUME_MASK
from strokeseg.infer.fusion import FUSION_RULES, FusionSettings
from strokeseg.infer.postprocessing import DEFAULT_CANDIDATES, LARGEST
from strokeseg.models import is_volumetric
from strokeseg.workdir import (
    StageWriter,
    grid_plan,
    is_synthetic_run,
    read_csv,
    require_stage,
    stage_config,
    stage_dir,
    write_csv,
)

log = logging.getLogger(__name__)

STAGE = FUSION
MASK_ORDER = (*PLANES, VOLUME, FUSED)
PROBABILITIES_DIR = "probabilities"
MODELS_3D_DIR, VOLUME_COMPARISON_CSV = "models_3d", "volume_comparison.csv"
SIZES_CSV, CV_SUBJECTS_CSV = "min_lesion_voxels.csv", "cv_subjects.csv"
DICE_TIERS_CSV = "dice_tiers.csv"
PROBABILITY_ENCODING = "uint8 = round(255 * probability)"
DEFAULT_SETTINGS = FusionSettings()


@dataclass(frozen=True)
class FusionStageOptions:
    """How stage 10 predicts, fuses and reports (its command-line options, recorded in the manifest).
    The fusion itself becomes a :class:`FusionSettings` once stage 08's weights are known."""
    fusion: str = DEFAULT_SETTINGS.rule
    threshold: float = DEFAULT_SETTINGS.threshold
    flip_tta: bool = DEFAULT_SETTINGS.flip_tta
    min_lesion_voxels: int | str | None = None      # None: config.postprocess; N; "auto": chosen on cross-validation
    largest_component: bool = False                  # keep the largest component only (not with min_lesion_voxels)
    ensemble: bool = False
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    overlays: int = 3
    save_probabilities: bool = False
    batch_size: int | None = None                    # None: training.eval_batch_size
    volume_model: str | None = None                  # a 3-D model of stage 09, evaluated beside the fusion
    average: bool = False                            # also the mean of the fused and the 3-D probability

    def __post_init__(self):
        size = self.min_lesion_voxels
        if size != "auto" and size is not None and (isinstance(size, (bool, str)) or int(size) != size or size < 0):
            raise ConfigError(f"min_lesion_voxels must be 'auto' or a whole number >= 0, got {size!r}")
        if self.largest_component and size is not None:
            raise ConfigError("--largest-component and --min-lesion-voxels are two post-processing rules; give one")
        if not self.candidates or any(int(c) != c or c < 0 for c in self.candidates) \
                or len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(f"candidate sizes must be distinct whole numbers >= 0, got {self.candidates}")
        if self.overlays < 0:
            raise ConfigError(f"overlays must be >= 0, got {self.overlays}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.volume_model is not None and not is_volumetric(self.volume_model):
            raise ConfigError(f"--volume-model {self.volume_model}: not a 3-D model")
        if self.average and self.volume_model is None:
            raise ConfigError("--average needs --volume-model")
        # Checked now, before any model is loaded; weighted_mean's weights come from stage 08 later,
        # so equal ones stand in for them here.
        self.settings(dict.fromkeys(PLANES, 1.0) if self.fusion == "weighted_mean" else None)

    def postprocess(self, config: PostprocessConfig | None = None) -> tuple[str, int]:
        """(rule, minimum size) this run asks for: ``--largest-component`` → ``largest``,
        ``--min-lesion-voxels N`` → ``min_size`` N, ``auto`` → ``auto``, else ``config`` (the recorded
        config's ``postprocess`` section). The size is 0 unless the rule is ``min_size``."""
        if self.largest_component:
            return LARGEST, 0
        if self.min_lesion_voxels == "auto":
            return "auto", 0
        if self.min_lesion_voxels is not None:
            return "min_size", int(self.min_lesion_voxels)
        config = config or PostprocessConfig()
        return config.rule, int(config.min_lesion_voxels) if config.rule == "min_size" else 0

    def settings(self, weights: dict[str, float] | None, postprocess: tuple[str, int] | None = None) -> FusionSettings:
        """The fusion settings of this run; ``postprocess``: the (rule, size) applied (auto's choice, or
        the config's), by default :meth:`postprocess` of the flags alone (``auto``: nothing removed yet)."""
        min_voxels, largest = PostprocessConfig(*(postprocess or self.postprocess())).removal()
        return FusionSettings(rule=self.fusion, threshold=float(self.threshold), weights=weights,
                              min_lesion_voxels=min_voxels, largest_component=largest, flip_tta=bool(self.flip_tta))


def starting_config(workdir: Path, overrides: Iterable[str] = ()) -> Config:
    """The config stage 08 recorded (stage 09 is optional), plus overrides."""
    return apply_overrides(stage_config(workdir, TRAINING), overrides).validate()


def run(workdir: Path, config: Config, progress: bool = True,
        options: FusionStageOptions = FusionStageOptions()) -> Path:
    from strokeseg.evaluate import holdout as holdout_eval
    from strokeseg.infer import models_folder
    from strokeseg.infer.inference import load_plane_models, plane_predictors
    from strokeseg.infer.tri_planar import TriPlanarPredictor

    training_dir = require_stage(workdir, TRAINING)
    convert_dir = require_stage(workdir, CONVERT)
    folds = read_csv(require_stage(workdir, CROSS_VALIDATION) / FOLDS_CSV)
    holdout = holdout_eval.read_holdout(convert_dir / HOLDOUT_CSV)
    model = config.training.model
    batch = options.batch_size or config.training.eval_batch_size
    plan = grid_plan(workdir)
    config = stores_head_region(config, convert_dir, plan.planes[0])
    volumetric = is_volumetric(model)
    planes = (VOLUME,) if volumetric else plan.planes
    asked = options.postprocess(config.postprocess)
    if volumetric and (asked[0] == "auto" or options.volume_model):
        raise ConfigError(f"stage 08 trained a 3-D model ({model}): "
                          + ("the auto post-processing (--min-lesion-voxels auto, postprocess.rule=auto) is for "
                             "tri-planar studies; give a number of voxels or --largest-component"
                             if asked[0] == "auto" else "--volume-model compares a 3-D model with a "
                             "tri-planar fusion, and this study has none"))
    chosen = models_folder.trained_models(training_dir, model, options.ensemble, planes)
    weights = (models_folder.cross_validation_weights(training_dir, chosen, options.ensemble)
               if options.fusion == "weighted_mean" else None)
    applied = asked if asked[0] != "auto" else ("none", 0)     # auto: nothing removed until it has chosen
    settings = options.settings(weights, applied)
    synthetic = is_synthetic_run(workdir)

    with StageWriter(workdir, STAGE, config, synthetic=synthetic) as out:
        sources = {p: [(fold, training_dir / path) for fold, path in members] for p, members in chosen.items()}
        models_dir = models_folder.export_models(out.path / MODELS_DIR, sources, config, options.ensemble)
        plan.write(models_dir)   # predict places a new case on the grid the models were trained on
        # The exported models are loaded back as `strokeseg predict` loads them.
        canvases = {plane: _canvas(plan.shape, plane, config) for plane in planes if plane != VOLUME}
        predictors = plane_predictors(load_plane_models(models_dir, options.ensemble, canvases, planes), batch)
        predictor = TriPlanarPredictor(predictors, config.convert, settings, batch, kinds=plan.channel_kinds,
                                       window_step=config.training.window_step,
                                       window_batch=config.training.patch_batch_size)

        chosen_on = None
        if asked[0] == "auto":
            scores, used, applied = _choose_postprocess(training_dir, convert_dir, folds, model, predictor, chosen,
                                                        options, progress, planes)
            write_csv(scores, out.path / SIZES_CSV)
            write_csv(used, out.path / CV_SUBJECTS_CSV)
            settings = options.settings(weights, applied)
            predictor = predictor.with_settings(settings)
            chosen_on = "cross-validation out-of-fold predictions (stage 10 auto)"
        models_folder.write_fusion_settings(
            models_dir, settings, ensemble=options.ensemble, model=model,
            single_plane_threshold=SINGLE_PLANE_THRESHOLD, postprocess_chosen_on=chosen_on,
            sources={p: [{"fold": f, "file": f"{TRAINING}/{path}"} for f, path in m] for p, m in chosen.items()})

        volume = None
        if options.volume_model:
            volume, provenance = _volume_predictor(workdir, config, options, settings, plan, out.path / MODELS_3D_DIR,
                                                   batch)
            out.extra["volume_model"] = {"model": options.volume_model, "models": provenance}
        lesions = location_tables.lesion_locations(workdir)
        rows, detected = _evaluate_holdout(holdout, predictor, plan, config, options, out.path, progress, volume,
                                           locate=lesions is not None)
        subjects, tiers = _tables(rows, holdout, config, out.path, planes)
        if lesions is not None:
            out.extra["by_location"] = _location_tables(workdir, subjects, lesions, detected, out.path)
        rule = settings.describe() + (", fold ensemble" if options.ensemble else "")
        if volumetric:
            rule = f"3-D model ({model}): threshold and post-processing only, no fusion"
        elif len(planes) == 1:
            rule = f"one plane ({planes[0]}): threshold and post-processing only, no fusion"
        _figures(subjects, out.path, holdout, synthetic, rule, options, config, plan.channels[0])

        out.extra.update({
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
            "fusion": settings.to_record(), "batch_size": batch, "model": model,
            "min_lesion_voxels": settings.min_lesion_voxels, "n_subjects": int(len(holdout)),
            "postprocess": {"asked": asked[0], "rule": applied[0], "min_lesion_voxels": applied[1]},
            "dice": _fused_dice(tiers),
            "single_plane_threshold": SINGLE_PLANE_THRESHOLD,
            "models": {p: [{"fold": f, "source": f"{TRAINING}/{path}"} for f, path in members]
                       for p, members in chosen.items()},
            "probability_encoding": PROBABILITY_ENCODING if options.save_probabilities else None,
        })
    return stage_dir(workdir, STAGE)


def stores_head_region(config: Config, convert_dir: Path, plane: str) -> Config:
    """``config`` with the ``convert.head_region`` stage 03's stores were normalised with (their
    ``geometry.json``; stores from before the rule existed: the non-zero voxels), so that the hold-out
    volumes, and ``strokeseg predict`` through the exported ``config.json``, are normalised as the
    models' training slices were."""
    import json

    from strokeseg.data.head_region import LEGACY_RULE
    from strokeseg.data.stores import GEOMETRY

    path = convert_dir / plane / GEOMETRY
    if config.convert.normalization != "volume_robust" or not path.is_file():
        return config
    stored = json.loads(path.read_text()).get("head_region", LEGACY_RULE)
    if stored == config.convert.head_region:
        return config
    log.warning("convert.head_region=%s, but stage 03's stores were normalised with %r: the hold-out is "
                "normalised as they were", config.convert.head_region, stored)
    return replace(config, convert=replace(config.convert, head_region=stored))


def _volume_predictor(workdir: Path, config: Config, options: FusionStageOptions, settings: FusionSettings, plan,
                      folder: Path, batch: int):
    """(predictor of the 3-D model of ``--volume-model``, its sources): stage 09's best fold (or every fold
    with ``--ensemble``) exported to ``folder`` as a models folder of its own, and loaded back from there.
    Its mask takes the fused mask's threshold and component removal, without plane weights."""
    from strokeseg.infer import models_folder
    from strokeseg.infer.inference import load_plane_models, plane_predictors
    from strokeseg.infer.tri_planar import TriPlanarPredictor
    from strokeseg.train.recipes import model_training

    comparison_dir = require_stage(workdir, COMPARISON)
    chosen = models_folder.trained_models(comparison_dir, options.volume_model, options.ensemble, (VOLUME,))
    sources = {VOLUME: [(fold, comparison_dir / path) for fold, path in chosen[VOLUME]]}
    training = model_training(config, options.volume_model, config.comparison.recipe, config.comparison.max_epochs)
    models_dir = models_folder.export_models(folder, sources, replace(config, training=training), options.ensemble)
    plan.write(models_dir)
    volume_settings = settings.replace(rule="mean", weights=None)
    provenance = [{"fold": fold, "file": f"{COMPARISON}/{path}"} for fold, path in chosen[VOLUME]]
    models_folder.write_fusion_settings(models_dir, volume_settings, ensemble=options.ensemble,
                                        model=options.volume_model, sources={VOLUME: provenance})
    predictors = plane_predictors(load_plane_models(models_dir, options.ensemble, None, (VOLUME,)), batch)
    predictor = TriPlanarPredictor(predictors, config.convert, volume_settings, batch, kinds=plan.channel_kinds,
                                   window_step=training.window_step, window_batch=training.patch_batch_size)
    return predictor, provenance


def _canvas(shape, plane: str, config: Config) -> tuple[int, int]:
    from strokeseg.data import planes

    return planes.canvas_for(shape, plane, config.convert.canvas_multiple).shape


def _choose_postprocess(training_dir: Path, convert_dir: Path, folds, model: str, predictor, chosen,
                        options: FusionStageOptions, progress: bool, planes: tuple[str, ...]):
    """(scores per candidate size and of the largest-component rule, subjects used, the chosen (rule, size))
    on the cross-validation subjects' out-of-fold fused predictions (:mod:`strokeseg.infer.postprocessing`);
    the hold-out is never read."""
    from strokeseg.infer import postprocessing

    runs = read_csv(training_dir / RUNS_CSV)
    source = postprocessing.CrossValidationRuns(training_dir, convert_dir, runs[runs["model"] == model], folds,
                                                planes)
    used = source.subjects()
    # A fold model already loaded for the hold-out (default mode) is reused, not loaded twice.
    loaded = {} if options.ensemble else {(p, chosen[p][0][0]): predictor.predictors[p] for p in planes}
    cases = postprocessing.out_of_fold_cases(source, used, predictor, loaded, progress)
    table, rule, size = postprocessing.postprocess_table(cases, options.candidates, predictor.settings.connectivity)
    log.info("post-processing %s chosen on %d cross-validation subjects (folds %s)",
             LARGEST if rule == LARGEST else f"min_size {size} voxels", len(used), source.common_folds())
    return table, used, (rule, size)


def _evaluate_holdout(holdout, predictor, plan, config: Config, options: FusionStageOptions, root: Path,
                      progress: bool, volume=None, locate: bool = False) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every hold-out subject scored on its own grid (:func:`strokeseg.evaluate.holdout.evaluate_subject`);
    its fused mask, and with ``save_probabilities`` its probability maps, written with its own geometry
    (the first channel's header and affine). Returns the metric rows and, with ``locate``, per subject
    which of its ground-truth lesions the fused mask detects (stage 01's lesion numbering)."""
    from tqdm import tqdm

    from strokeseg.data.lesion_locations import lesion_detected
    from strokeseg.data.nifti import write_nifti
    from strokeseg.data.planned import channel_paths
    from strokeseg.evaluate.holdout import evaluate_subject

    (root / MASKS_DIR).mkdir()
    if options.save_probabilities:
        (root / PROBABILITIES_DIR).mkdir()
    rows, detected = [], {}
    for subject in tqdm(holdout.itertuples(index=False), total=len(holdout), desc="10 fusion", unit="subject",
                        disable=not progress, leave=False):
        name = str(subject.subject_name)
        result = evaluate_subject(name, channel_paths(subject, plan.channels), Path(subject.mask), predictor, plan,
                                  config.dataset.binarize_masks, keep_probabilities=options.save_probabilities,
                                  volume=volume, average=options.average)
        write_nifti(root / MASKS_DIR / fused_mask_file(name), result.fused, reference=result.image, dtype=np.uint8)
        if options.save_probabilities:
            for key, probability in result.probabilities.items():
                write_nifti(root / PROBABILITIES_DIR / f"{name}_{key}_probability.nii.gz", _as_uint8(probability),
                            reference=result.image, dtype=np.uint8)
        rows += result.rows
        if locate:
            detected[name] = lesion_detected(result.truth, result.fused)
    return rows, detected


def _location_tables(workdir: Path, subjects: pd.DataFrame, lesions: pd.DataFrame, detected: dict[str, np.ndarray],
                     root: Path) -> dict:
    """by_location.csv (per-subject metrics per location class and hemisphere), holdout_lesions.csv (stage 01's
    rows of the hold-out lesions, each with whether the fused mask detects it) and detection_by_location.csv."""
    located = location_tables.subject_locations(workdir)
    order = list(dict.fromkeys(subjects["mask"]))
    write_csv(location_tables.by_location(location_tables.with_locations(subjects, located), "mask", order),
              root / BY_LOCATION_CSV)
    rows = []
    for name, hits in detected.items():
        own = lesions[lesions["subject_name"] == name].sort_values("lesion")
        if len(own) != len(hits):   # a mask edited since stage 01: its lesions cannot be matched
            log.warning("10: %s has %d lesions, stage 01 located %d: left out of the detection table",
                        name, len(hits), len(own))
            continue
        rows.append(own.assign(detected=hits))
    columns = [*lesions.columns, "detected"]
    holdout_lesions = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    write_csv(holdout_lesions, root / HOLDOUT_LESIONS_CSV)
    table = location_tables.detection_by_location(holdout_lesions)
    write_csv(table, root / DETECTION_BY_LOCATION_CSV)
    return {"lesions": int(len(holdout_lesions)), "detected": int(holdout_lesions["detected"].sum())}


def _as_uint8(probability: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(probability, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _tables(rows: list[dict], holdout, config: Config, root: Path,
            planes: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """subjects.csv, summary.csv, fusion_gain.csv (several planes), by_volume_bin.csv and dice_tiers.csv;
    returns the subjects and Dice-tier tables. A ``units`` column says whether mL and mm are physical or
    voxels."""
    from strokeseg.evaluate import subject_tables

    present = set(r["mask"] for r in rows)
    order = tuple(m for m in MASK_ORDER if m in (*planes, FUSED)) + tuple(m for m in (VOLUME_MASK, AVERAGE)
                                                                          if m in present and m not in planes)
    bins = holdout.set_index("subject_name")["volume_bin"].astype(int)
    subjects = subject_tables.subjects_frame([{k: v for k, v in r.items() if k != "units"} for r in rows], bins,
                                             config.bins.volume_edges)
    subjects["units"] = rows[0]["units"] if rows else "mm"
    write_csv(subjects, root / SUBJECTS_CSV)
    write_csv(subject_tables.summary(subjects, order), root / SUMMARY_CSV)
    if len(planes) > 1:
        fused_planes = (*planes, FUSED)
        gain = subject_tables.paired_comparison(subjects[subjects["mask"].isin(fused_planes)], FUSED, fused_planes)
        write_csv(gain.rename(columns={"mask": "plane", "mask_mean": "plane_mean", "reference_mean": "fused_mean"}),
                  root / FUSION_GAIN_CSV)
    three_d = tuple(m for m in (VOLUME_MASK, AVERAGE) if m in order and m not in planes)
    if three_d:
        compared = subjects[subjects["mask"].isin((FUSED, *three_d))]
        write_csv(subject_tables.paired_comparison(compared, FUSED, (FUSED, *three_d))
                  .rename(columns={"reference_mean": "fused_mean"}), root / VOLUME_COMPARISON_CSV)
    write_csv(subject_tables.by_volume_bin(subjects, config.bins.volume_edges, order), root / BY_VOLUME_BIN_CSV)
    tiers = subject_tables.dice_tiers(subjects, order)
    write_csv(tiers, root / DICE_TIERS_CSV)
    return subjects, tiers


def _fused_dice(tiers: pd.DataFrame) -> dict:
    """The fused mask's n and mean Dice per group of ``dice_tiers.csv`` (None where a group is empty)."""
    fused = tiers[tiers["mask"] == FUSED].set_index("group")
    return {group: {"n": int(row["n"]), "mean": None if row["n"] == 0 else float(row["dice_mean"])}
            for group, row in fused.iterrows()}


def _figures(subjects, root: Path, holdout, synthetic: bool, rule: str, options: FusionStageOptions,
             config: Config, image_column: str) -> None:
    from strokeseg.report.fusion_figures import holdout_figures

    holdout_figures(subjects, holdout.set_index("subject_name"), root / MASKS_DIR, root, synthetic, rule,
                    options.overlays, config.dataset.binarize_masks, image_column)


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
    defaults = FusionStageOptions()
    parser.add_argument("--fusion", choices=FUSION_RULES, default=defaults.fusion,
                        help="mean: mean probability >= threshold (upstream's soft average); majority: >= 2 of "
                             "3 planes with probability > threshold; weighted_mean: planes weighted by their "
                             "stage-08 cross-validation 3-D Dice (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=defaults.threshold,
                        help="fusion threshold (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true",
                        help="per plane, the mean of every stage-08 fold model (default: the best fold of "
                             "08_training/best_folds.csv)")
    parser.add_argument("--flip-tta", action="store_true",
                        help="left-right flip test-time augmentation (twice the prediction time)")
    # One post-processing rule: argparse turns both flags into a one-line usage error (exit 2).
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--min-lesion-voxels", type=_size, default=None, metavar="auto|N",
                       help="remove fused lesions (6-connected) smaller than N voxels; 'auto' chooses among the "
                            "sizes and --largest-component on the cross-validation subjects' out-of-fold "
                            "predictions, never the hold-out (default: postprocess.rule of the config: keep all)")
    rules.add_argument("--largest-component", action="store_true",
                       help="keep only the largest fused lesion (6-connected), the LGG U-Net's rule; it drops "
                            "true multifocal lesions (default: postprocess.rule of the config)")
    parser.add_argument("--overlays", type=int, default=defaults.overlays, metavar="N",
                        help="tri-planar overlay figures for N subjects spread over the fused-Dice ranking "
                             "(default: %(default)s)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write the three plane probability maps and the fused one (uint8, "
                             "probability x 255)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per model call (default: training.eval_batch_size)")
    parser.add_argument("--volume-model", default=None, metavar="NAME",
                        help="also evaluate this 3-D model of stage 09 (e.g. attention_unet3d) on the same hold-out "
                             "subjects: the 'volume' rows and volume_comparison.csv (Wilcoxon against the fused mask)")
    parser.add_argument("--average", action="store_true",
                        help="with --volume-model: also the mean of the fused and the 3-D probability ('average')")


def run_options(args: argparse.Namespace) -> dict:
    return {"options": FusionStageOptions(
        fusion=args.fusion, threshold=args.threshold, flip_tta=args.flip_tta, min_lesion_voxels=args.min_lesion_voxels,
        largest_component=args.largest_component, ensemble=args.ensemble, overlays=args.overlays,
        save_probabilities=args.save_probabilities, batch_size=args.batch_size, volume_model=args.volume_model,
        average=args.average)}

"""``strokeseg predict``: lesion masks for NIfTI volumes from trained per-plane models.

The same command runs inside the Docker image (docker/README.md) and outside it::

    strokeseg predict INPUT [INPUT ...] --models DIR --output DIR [options]
    strokeseg predict --channel dwi=case_dwi.nii.gz --channel adc=case_adc.nii.gz --models DIR --output DIR

Which image channels a case has, in which order, and the grid the models were trained on come from
the models folder's ``grid_plan.json`` (written by stage 10; a folder without one holds T1 models
on the MNI152 grid, as before grid plans). Inputs are ``.nii``/``.nii.gz`` files and/or folders
(their ``*.nii``/``*.nii.gz`` files, top level only, hidden files skipped, sorted by name). With one
channel every file is a case. With several, files are named as nnU-Net names them,
``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, … (channel k of the plan's order), or one case is
given channel by channel with ``--channel NAME=FILE``; a case missing a channel fails. Per case:

1. load and validate (:func:`strokeseg.data.nifti.load_channels`: not NIfTI, truncated gzip, 4-D,
   NaN/inf, constant image, channels on different grids are faults of that case);
2. place it on the models' grid (:class:`strokeseg.data.grid_plan.GridPlan`): a volume on a fixed
   plan's grid (ATLAS: MNI152, 197×233×189, 1 mm) is used as is, any other grid is resampled onto it
   (trilinear) and the log says so; on a target-spacing plan the case is reoriented and resampled
   to the plan's voxel size, as the training subjects were. Resampling goes through world
   coordinates: for MNI models the image must already be registered to MNI152NLin2009aSym;
3. normalise once (the models folder's ``config.json`` ``convert`` section, else the package
   defaults; flags override both; a ``config.json`` from before ``convert.head_region`` existed
   means models trained under ``nonzero``, which is then kept), on the plan grid's affine as stage 03
   normalised the training volumes; predict every slice of the three planes in batches with the
   plane's model or the mean of its fold models (:mod:`strokeseg.infer.inference`), optionally with
   left–right flip test-time augmentation;
4. fuse (:mod:`strokeseg.infer.fusion`; mean probability ≥ 0.5 by default, upstream's rule), then
   post-process as the models folder's ``fusion.json`` says (stage 10's rule), or as a flag overrides it:
   ``--min-lesion-voxels N`` removes components smaller than N voxels (of the MNI grid, i.e. mm³),
   ``--largest-component`` keeps the largest component only;
5. a resampled case's mask goes back to the input's own grid (float, trilinear, ≥ 0.5; see
   :mod:`strokeseg.data.resample`);
6. write ``<case>_mask.nii.gz`` (uint8 {0, 1}, the first channel's affine and header), with
   ``--save-probabilities`` ``<case>_probability.nii.gz`` (float32, the fused probability map), and
   ``<case>_lesions.csv``: where each lesion is (:mod:`strokeseg.infer.lesion_report`; one row per
   26-connected lesion, largest first: lesion, voxels, volume_ml, centroid_x/y/z_mm, hemisphere,
   left_share, right_share, location_class, top_regions, regions, location_note). Lesions are located
   on the input's own grid when the input is in MNI space: declared by its first channel (a
   ``space-MNI`` file name, or the MNI152 sform/qform code) with ``--space auto`` (default), or for every
   input with ``--space MNI`` (the user says the inputs are MNI-registered). In native space the
   location columns stay empty and ``location_note`` says why: an MNI atlas would answer wrongly there.

The case name is the file name without ``.nii.gz``/``.nii`` and without a trailing ``_T1w``
(``sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz`` → ``sub-r001s001_ses-1_space-MNI152NLin2009aSym``),
as upstream named its result folders; for several channels, without the ``_NNNN`` channel index.
``predictions.csv`` has one row per case, in input order (:data:`CSV_COLUMNS`; ``input`` lists a
case's channel files joined by ``;``); ``status`` is ``ok``, ``failed`` (``message``: one line naming
the file and the fault) or ``pending`` (not processed yet); ``warning`` says what had to be assumed
about an input's geometry (no orientation in the header: qform and sform codes 0; zero ``pixdim``
beside a valid sform), empty when nothing was; lesion volume uses the input grid's voxel size, lesion
count 6-connectivity (the fusion settings'; the lesions table's rows are 26-connected, so it may list
fewer lesions); ``hemisphere``, ``location_class`` and ``top_regions`` describe the whole mask as one
lesion, ``location_note`` is the lesions table's. A zero voxel size without an sform, a singular or
non-finite affine, a FIFO or other non-regular file (never opened), a symbolic link loop and an empty
file are failed cases (:func:`strokeseg.data.nifti.load_image`).

The output folder and its ``predictions.csv`` agree at every moment, even when the run is killed
(SIGKILL, power cut): every mask or probability map of a case of this run that is present belongs
to an ``ok`` row of the CSV, and so does every lesions table. In order:

1. every usage check first (options, models folder, the models themselves, inputs, the output
   folder's writability); a fault there is exit 2 and nothing in the output folder is touched;
2. the hidden scratch files a killed earlier run left are removed (:func:`strokeseg.scratch.remove_leftovers`);
3. the outputs of this run's case names from an earlier run are removed, then ``predictions.csv``
   is written with every case ``pending``;
4. per case, its files are written under hidden scratch names, the CSV is rewritten with the case's
   row (``ok``), and only then are the files renamed into place (a failed case: its row ``failed``,
   its scratch removed). Outputs of other case names (earlier runs on other inputs) are left alone
   and are not listed.

Every file is written atomically (temporary file + rename); a rerun after a kill removes the
killed run's scratch and writes the same files. Exit status: 0 every case ok, 1 some case failed
(or was left pending because the CSV could not be written), 2 usage error (bad options, missing or
inconsistent models folder or model file, a ``config.json``/``fusion.json`` value out of range, no
inputs, an output folder that cannot be created or written), before any case is processed: one
line ``error: <path or option>: <fault>`` on stderr, nothing written, earlier outputs unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from strokeseg.config import HEAD_REGIONS, PLANES, VOLUME, ConvertConfig, from_dict
from strokeseg.data import planes, resample
from strokeseg.data.grid_plan import GRID_PLAN_JSON, GridPlan, NativeGrid
from strokeseg.data.head_region import LEGACY_RULE
from strokeseg.data.input_files import irregularity
from strokeseg.data.lesions import component_sizes
from strokeseg.data.nifti import load_channels, write_nifti
from strokeseg.errors import InputError, StrokesegError
from strokeseg.evaluate.volume_metrics import voxel_volume_ml
from strokeseg.infer import lesion_report, models_folder
from strokeseg.infer.fusion import FUSION_RULES, FusionSettings
from strokeseg.infer.tri_planar import TriPlanarPredictor
from strokeseg.runtime import configure_logging, configure_tensorflow
from strokeseg.scratch import file_path as scratch_path
from strokeseg.scratch import remove_leftovers
from strokeseg.workdir import write_csv

log = logging.getLogger("strokeseg.infer.predict")

CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("case", "input", "status", "message", "warning", "resampled", "lesion_volume_ml", "lesion_count",
               "voxels", "seconds") + lesion_report.SUMMARY_COLUMNS
OK, FAILED, PENDING = "ok", "failed", "pending"
PENDING_MESSAGE = "not processed yet: the run is still going, or it was stopped before this case (run predict again)"
MASK_SUFFIX = "_mask.nii.gz"
PROBABILITY_SUFFIX = "_probability.nii.gz"
LESIONS_SUFFIX = "_lesions.csv"
CONFIG_NAME = models_folder.CONFIG_JSON
FUSION_NAME = models_folder.FUSION_JSON     # stage 10's fusion settings, exported with its models
CONVERT_KEYS = ("normalization", "robust_percentiles", "head_region", "canvas_multiple", "store_dtype", "ct_window")
# Models folders from before grid plans: T1 models on ATLAS's MNI grid.
MNI_T1_PLAN = GridPlan("fixed", resample.MNI_SHAPE, (1.0, 1.0, 1.0), ("t1w",), ("t1",), PLANES, True,
                       tuple(float(a) for a in resample.MNI_AFFINE.ravel()))
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})\.nii(\.gz)?$", re.IGNORECASE)
DEFAULT_BATCH_SIZE = 8     # CPU: small batches keep activations in cache; use 32+ on a GPU


class UsageError(StrokesegError):
    """A problem with the command as a whole (exit 2): nothing is processed."""


class RunError(StrokesegError):
    """The run stopped after cases were processed (exit 1): ``predictions.csv`` could not be written."""


@dataclass(frozen=True)
class Options:
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    settings: FusionSettings = field(default_factory=FusionSettings)
    save_probabilities: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    skip_empty: bool = True         # one model call for all slices outside the head (same result, faster)
    crop_to_head: bool = True       # fully convolutional models see the canvas window of the head only
    window_step: float = 0.5        # 3-D models: the training run's sliding-window step and windows per call
    window_batch: int = 2
    space: str = lesion_report.AUTO     # which inputs count as MNI space, for locating lesions


# ------------------------------------------------------------------------------------ arguments
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``strokeseg predict`` options (self-contained: also used by ``python -m strokeseg.infer.predict``)."""
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="NIfTI files (.nii, .nii.gz) and/or folders of them (top level); several channels: "
                             "<case>_0000.nii.gz, <case>_0001.nii.gz, ... in the models' channel order")
    parser.add_argument("--channel", action="append", default=[], metavar="NAME=FILE",
                        help="one case given channel by channel (repeat for each of the models' channels)")
    parser.add_argument("--models", type=Path, required=True, metavar="DIR",
                        help="folder with axial.keras, sagittal.keras, coronal.keras and/or per-fold sets "
                             "<plane>_fold<k>.keras (or a 3-D model: volume.keras or volume_fold<k>.keras), and "
                             "optionally the training config.json")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="folder for <case>_mask.nii.gz and predictions.csv (created if missing)")
    parser.add_argument("--ensemble", action="store_true",
                        help="average every <plane>_fold<k>.keras even where <plane>.keras exists "
                             "(without it, <plane>.keras is used when present, else the fold set)")
    # Fusion settings default to the models folder's fusion.json (written by stage 10), so that
    # `strokeseg predict --models 10_fusion/models` fuses exactly as stage 10 did; flags override it.
    defaults = FusionSettings()
    parser.add_argument("--fusion", choices=FUSION_RULES, default=None,
                        help="mean: mean probability >= threshold (upstream); majority: >= 2 of 3 planes "
                             "with probability > threshold; weighted_mean: needs weights (default: the models "
                             f"folder's {FUSION_NAME}, else {defaults.rule})")
    parser.add_argument("--weights", type=float, nargs=3, metavar=("AXIAL", "SAGITTAL", "CORONAL"),
                        default=None, help=f"plane weights of weighted_mean (default: {FUSION_NAME})")
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"fusion threshold (default: {FUSION_NAME}, else {defaults.threshold})")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                        help="left-right flip test-time augmentation, twice the prediction time "
                             f"(default: {FUSION_NAME}, else off)")
    # Each flag replaces fusion.json's whole post-processing; two rules at once is a usage error (exit 2).
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument("--min-lesion-voxels", type=int, default=None, metavar="N",
                       help="remove lesions (6-connected components) smaller than N voxels of the "
                            f"1 mm MNI grid, i.e. N mm3; 0 keeps all (default: {FUSION_NAME}, else "
                            f"{defaults.min_lesion_voxels})")
    rules.add_argument("--largest-component", action="store_true", default=None,
                       help="keep only the largest lesion (6-connected component), the LGG U-Net's rule; it drops "
                            f"true multifocal lesions (default: {FUSION_NAME}, else off)")
    parser.add_argument("--space", choices=lesion_report.SPACES, default=lesion_report.AUTO,
                        help="the inputs in MNI space, whose lesions <case>_lesions.csv locates (hemisphere, class, "
                             "atlas regions): auto = those that declare it (a space-MNI file name, or the MNI152 "
                             "sform/qform code); MNI = every input (you know they are registered to MNI152). "
                             "Other inputs get the reason instead of a location (default: %(default)s)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>_probability.nii.gz (float32 fused probability)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="slices per model call (default: %(default)s)")
    parser.add_argument("--all-slices", action="store_true",
                        help="run the models on every slice; by default the slices outside the head (an "
                             "all-zero input) share one model call, which gives the same masks faster")
    parser.add_argument("--whole-canvas", action="store_true",
                        help="run the models on the whole canvas; by default fully convolutional models (RAX-Net, "
                             "U-Net) see only the window of the canvas that holds the head, which is faster and "
                             "can change a few voxels at the window's border (README, Performance)")
    # Before the all-zero slices shared one call, skipping them was this opt-in flag; still accepted.
    parser.add_argument("--skip-empty-slices", action="store_true", help=argparse.SUPPRESS)
    defaults = ConvertConfig()
    parser.add_argument("--normalization", choices=("volume_robust", "slice_max"), default=None,
                        help=f"intensity normalisation the models were trained with (default: the models "
                             f"folder's config.json, else {defaults.normalization})")
    parser.add_argument("--robust-percentiles", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help=f"volume_robust window (default: config.json, else {defaults.robust_percentiles})")
    parser.add_argument("--head-region", choices=HEAD_REGIONS, default=None,
                        help=f"voxels that set the volume_robust window (default: config.json, else "
                             f"{defaults.head_region}; a config.json without it: {LEGACY_RULE})")
    parser.add_argument("--canvas-multiple", type=int, default=None,
                        help=f"canvas size multiple (default: config.json, else {defaults.canvas_multiple})")
    parser.add_argument("--store-dtype", choices=("uint8", "float16", "float32"), default=None,
                        help=f"intensity dtype of training's stores (default: config.json, else "
                             f"{defaults.store_dtype})")
    if "--quiet" not in parser._option_string_actions:  # the strokeseg CLI may add its own
        parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def _models_file(path: Path) -> bool:
    """Whether the models folder has the file ``path``; one that exists but is not a regular file (a
    folder, a FIFO, a symbolic link loop) is a :class:`UsageError` rather than silently absent."""
    kind = irregularity(path)
    if kind is None:
        return True
    if kind == "not found":
        return False
    if kind == "a broken symbolic link":
        raise UsageError(f"{path}: dangling symbolic link to {os.readlink(path)}")
    if kind.startswith("cannot"):
        raise UsageError(f"{path}: {kind}")
    raise UsageError(f"{path}: not a regular file ({kind}), not opened")


def _json_object(path: Path, what: str) -> dict:
    """A JSON object file of the models folder; {} when there is none."""
    if not _models_file(path):
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable {what} ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(record, dict):
        raise UsageError(f"{path}: not a JSON object")
    return record


def recorded_config(models_dir: Path) -> dict:
    """``<models>/config.json`` (the training run's config) as a dict; {} when there is none."""
    return _json_object(Path(models_dir) / CONFIG_NAME, "config")


def convert_config(models_dir: Path, args: argparse.Namespace | None = None) -> ConvertConfig:
    """Package defaults, then the ``convert`` section of ``<models>/config.json`` if present, then flags."""
    overrides: dict = {}
    path = Path(models_dir) / CONFIG_NAME
    if _models_file(path):
        section = recorded_config(models_dir).get("convert", {})
        if not isinstance(section, dict):
            raise UsageError(f"{path}: 'convert' is not a JSON object")
        overrides.update({k: v for k, v in section.items() if k in CONVERT_KEYS})
        if "head_region" not in section:   # trained before the rule existed: on the non-zero voxels
            overrides["head_region"] = LEGACY_RULE
        log.info("normalisation from %s: %s", path, overrides or "package defaults")
    if args is not None:
        for key in CONVERT_KEYS:
            value = getattr(args, key, None)
            if value is not None:
                overrides[key] = list(value) if isinstance(value, (list, tuple)) else value
    try:
        return from_dict({"convert": overrides}).convert
    except StrokesegError as exc:
        raise UsageError(f"{path}: {exc}" if _models_file(path) else str(exc)) from None


def fusion_settings(models_dir: Path, args: argparse.Namespace) -> FusionSettings:
    """The models folder's ``fusion.json`` settings (else the defaults), then the flags given."""
    path = Path(models_dir) / FUSION_NAME
    _models_file(path)
    try:
        settings = models_folder.fusion_settings(models_dir) or FusionSettings()
    except InputError as exc:
        raise UsageError(str(exc)) from None
    if path.is_file():
        log.info("fusion settings from %s", path)
    rule = args.fusion or settings.rule
    if rule != "weighted_mean" and args.weights is not None:
        raise UsageError("--weights is only used with --fusion weighted_mean")
    weights = dict(zip(PLANES, args.weights)) if args.weights is not None else settings.weights
    if rule == "weighted_mean" and weights is None:
        raise UsageError("--fusion weighted_mean needs --weights AXIAL SAGITTAL CORONAL")
    # Each flag is checked on its own first, so that an error names the flag at fault.
    flags = {"threshold": args.threshold, "min_lesion_voxels": args.min_lesion_voxels, "flip_tta": args.flip_tta,
             "weights": weights if args.weights is not None else None}
    changes = {"rule": rule, "weights": weights if rule == "weighted_mean" else None}
    # A post-processing flag replaces fusion.json's rule rather than adding to it.
    if args.min_lesion_voxels is not None:
        changes["largest_component"] = False
    if getattr(args, "largest_component", None):
        changes.update(largest_component=True, min_lesion_voxels=0)
    for name, value in flags.items():
        if value is None:
            continue
        try:
            FusionSettings(**{name: value}, **({"rule": rule} if name == "weights" else {}))
        except StrokesegError as exc:
            raise UsageError(f"--{name.replace('_', '-')}: {exc}") from None
        changes[name] = value
    return dataclasses.replace(settings, **changes)


def onednn_setting(models_dir: Path) -> bool:
    """The training run's ``onednn`` (``config.json``; True without one): a text such as "no" is a
    :class:`UsageError`, never read as true."""
    value = recorded_config(models_dir).get("onednn", True)
    if not isinstance(value, bool):
        raise UsageError(f"{Path(models_dir) / CONFIG_NAME}: onednn must be true or false, got {value!r}")
    return value


def window_settings(models_dir: Path) -> tuple[float, int]:
    """(sliding-window step, windows per call) of a 3-D model: the ``training`` section of the models
    folder's ``config.json`` (``window_step``, ``patch_batch_size``), else the package defaults."""
    section = recorded_config(models_dir).get("training", {})
    if not isinstance(section, dict):
        raise UsageError(f"{Path(models_dir) / CONFIG_NAME}: 'training' is not a JSON object")
    wanted = {k: section[k] for k in ("window_step", "patch_batch_size") if k in section}
    try:
        training = from_dict({"training": wanted}).training
    except StrokesegError as exc:
        raise UsageError(f"{Path(models_dir) / CONFIG_NAME}: {exc}") from None
    return training.window_step, training.patch_batch_size


def folder_options(models_dir: Path, batch_size: int = DEFAULT_BATCH_SIZE) -> Options:
    """The options a models folder asks for by itself (its ``config.json`` and ``fusion.json``, else the
    package defaults), as ``strokeseg predict`` runs without flags; faults are a :class:`UsageError`."""
    _models_file(Path(models_dir) / FUSION_NAME)
    try:
        settings = models_folder.fusion_settings(models_dir) or FusionSettings()
    except InputError as exc:
        raise UsageError(str(exc)) from None
    step, windows = window_settings(models_dir)
    return Options(convert=convert_config(models_dir), settings=settings, batch_size=batch_size,
                   window_step=step, window_batch=windows)


def options_from_args(args: argparse.Namespace) -> Options:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_models_folder(args.models)
    step, windows = window_settings(args.models)
    return Options(convert=convert_config(args.models, args), settings=fusion_settings(args.models, args),
                   save_probabilities=args.save_probabilities, batch_size=args.batch_size,
                   skip_empty=not args.all_slices, crop_to_head=not args.whole_canvas, window_step=step,
                   window_batch=windows, space=args.space)


# --------------------------------------------------------------------------------------- inputs
def is_nifti_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def case_name(path) -> str:
    """File name without ``.nii.gz``/``.nii`` and without a trailing ``_T1w``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith("_T1w") and len(name) > len("_T1w"):
        name = name[: -len("_T1w")]
    return name


@dataclass(frozen=True)
class Case:
    """One case to predict: its name and its channel files in the models' channel order."""
    name: str
    channels: tuple[tuple[str, Path], ...]
    fault: str = ""                      # a case that cannot be predicted (a channel file missing)

    @property
    def input(self) -> str:
        return ";".join(str(path) for _, path in self.channels) if self.channels else self.name


def find_inputs(paths, output: Path | None = None) -> list[Path]:
    """The input files in order: files as given (a missing one becomes a failed case), folders'
    ``*.nii``/``*.nii.gz`` files sorted by name (in the output folder, its own outputs are skipped)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)   # a missing file, a FIFO, a link loop ... fails as its own case
            continue
        own = output is not None and os.path.realpath(path) == os.path.realpath(output)
        try:
            entries = list(path.iterdir())
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the input folder ({exc.strerror or exc})") from None
        # Not regular files (FIFOs, link loops) named *.nii(.gz) are kept: each fails as its own case.
        members = sorted(p for p in entries
                         if is_nifti_name(p.name) and not p.name.startswith(".") and not p.is_dir()
                         and not (own and p.name.endswith((MASK_SUFFIX, PROBABILITY_SUFFIX))))
        if not members:
            raise UsageError(f"{path}: no .nii or .nii.gz files in this folder")
        found.extend(members)
    if not found:
        raise UsageError("no input files")
    return found


def find_cases(paths, channels: tuple[str, ...], output: Path | None = None,
               named: list[str] = ()) -> list[Case]:
    """The cases to predict, in input order (see the module docstring); clashing case names are a
    usage error, since their outputs would overwrite each other."""
    if named:
        if paths:
            raise UsageError("give either INPUT files or --channel NAME=FILE, not both")
        cases = [_named_case(named, channels)]
    elif len(channels) == 1:
        cases = [Case(case_name(p), ((channels[0], p),)) for p in find_inputs(paths, output)]
    else:
        cases = _indexed_cases(find_inputs(paths, output), channels)
    names: dict[str, list[str]] = {}
    for case in cases:
        names.setdefault(case.name, []).append(case.input)
    clashes = {name: inputs for name, inputs in names.items() if len(inputs) > 1}
    if clashes:
        name, inputs = next(iter(clashes.items()))
        raise UsageError(f"inputs share the case name {name!r} (their outputs would overwrite each "
                         f"other): {', '.join(inputs)}")
    return cases


def _named_case(named: list[str], channels: tuple[str, ...]) -> Case:
    given: dict[str, Path] = {}
    for item in named:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"--channel {item!r}: expected NAME=FILE")
        if name not in channels:
            raise UsageError(f"--channel {name}: the models read the channels {', '.join(channels)}")
        if name in given:
            raise UsageError(f"--channel {name} given twice")
        given[name] = Path(file)
    missing = [c for c in channels if c not in given]
    if missing:
        raise UsageError(f"--channel: the models also need {', '.join(missing)}")
    ordered = tuple((c, given[c]) for c in channels)
    return Case(case_name(ordered[0][1]), ordered)


def _indexed_cases(files: list[Path], channels: tuple[str, ...]) -> list[Case]:
    """nnU-Net naming: ``<case>_NNNN.nii(.gz)``, channel NNNN of ``channels``."""
    by_case: dict[str, dict[int, Path]] = {}
    for path in files:
        match = _CHANNEL_FILE.match(path.name)
        if match is None:
            raise UsageError(f"{path}: the models read {len(channels)} channels ({', '.join(channels)}); "
                             "name their files <case>_0000.nii.gz, <case>_0001.nii.gz, ... or use --channel")
        by_case.setdefault(match["case"], {})[int(match["index"])] = path
    cases = []
    for name, found in by_case.items():
        extra = sorted(i for i in found if i >= len(channels))
        missing = [f"{name}_{i:04d} ({c})" for i, c in enumerate(channels) if i not in found]
        fault = ""
        if missing:
            fault = f"{name}: channel file(s) missing: {', '.join(missing)}"
        elif extra:
            fault = f"{found[extra[0]]}: channel index {extra[0]} beyond the models' {len(channels)} channels"
        cases.append(Case(name, tuple((c, found[i]) for i, c in enumerate(channels) if i in found), fault))
    return cases


def models_plan(models_dir: Path) -> GridPlan:
    """The models folder's grid plan; the MNI T1 plan for folders from before grid plans."""
    path = Path(models_dir) / GRID_PLAN_JSON
    if not _models_file(path):
        return MNI_T1_PLAN
    try:
        return GridPlan.read(models_dir)
    except InputError as exc:
        raise UsageError(str(exc)) from None


# ------------------------------------------------------------------------------------ one case
def load_predictor(models_dir: Path, options: Options, ensemble: bool = False,
                   plan: GridPlan = MNI_T1_PLAN) -> TriPlanarPredictor:
    from strokeseg.infer.inference import folder_planes, load_plane_models, plane_predictors

    wanted = folder_planes(models_dir, plan.planes)
    canvases = {p: planes.canvas_for(plan.shape, p, options.convert.canvas_multiple).shape
                for p in wanted if p in PLANES}
    models = load_plane_models(models_dir, ensemble=ensemble, canvas_shapes=canvases, planes_wanted=wanted)
    predictors = plane_predictors(models, options.batch_size)
    for plane, predictor in predictors.items():
        log.info("%s: %d model(s), %d input channel(s)", plane, len(models[plane]), predictor.channels)
        fits = predictor.channels == len(plan.channels) if plane == VOLUME else \
            predictor.channels % len(plan.channels) == 0
        if not fits:
            raise InputError(Path(models_dir), f"the {plane} model reads {predictor.channels} input channels, which "
                                               f"do not fit the plan's {len(plan.channels)} image channels")
    return TriPlanarPredictor(predictors, options.convert, options.settings, options.batch_size, options.skip_empty,
                              plan.channel_kinds, options.window_step, options.window_batch, options.crop_to_head)


def _describe_grid(shape, affine) -> str:
    import nibabel as nib

    zooms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return (f"{'x'.join(str(int(s)) for s in shape)}, {'x'.join(f'{z:g}' for z in zooms)} mm, "
            f"{''.join(nib.aff2axcodes(affine))}")


def predict_volume(volume: np.ndarray, predictor: TriPlanarPredictor, save_probability: bool = False,
                   affine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Fused uint8 mask (and the fused probability when asked for) of a volume on the model grid
    (``affine``: that grid's, for the normalisation's head region; :attr:`PlacedCase.affine`)."""
    probabilities = predictor.probabilities(volume, affine)
    probability = predictor.fused_probability(probabilities) if save_probability else None
    return predictor.mask(probabilities), probability


def _outputs(output: Path, case: str) -> tuple[Path, Path, Path]:
    """A case's files: mask, probability map, lesions table (removed together, on failure and rerun)."""
    return (output / f"{case}{MASK_SUFFIX}", output / f"{case}{PROBABILITY_SUFFIX}",
            output / f"{case}{LESIONS_SUFFIX}")


def _remove(*paths: Path) -> list[str]:
    """Remove what exists of ``paths``; never raises: returns one line per file that could not be removed."""
    problems = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{path}: cannot remove ({exc.strerror or exc})")
            log.warning("%s", problems[-1])
    return problems


_NO_LOCATION = dict.fromkeys(lesion_report.SUMMARY_COLUMNS, "")


def _row(case: Case, status: str, message: str = "") -> dict:
    return {"case": case.name, "input": case.input, "status": status, "message": message, "warning": "",
            "resampled": None, "lesion_volume_ml": np.nan, "lesion_count": np.nan, "voxels": np.nan,
            "seconds": np.nan, **_NO_LOCATION}


def _failed_row(case: Case, message: str) -> dict:
    return _row(case, FAILED, message)


def _pending_row(case: Case) -> dict:
    return _row(case, PENDING, PENDING_MESSAGE)


def _grid_name(plan: GridPlan) -> str:
    return "the MNI152 grid" if plan == MNI_T1_PLAN else "the models' grid"


@dataclass
class PlacedCase:
    """A case read, validated and placed on the models' grid."""
    volume: np.ndarray          # (X, Y, Z), or (M, X, Y, Z) for M channels, on the plan grid
    native: NativeGrid          # the input's own grid, where the mask goes back
    image: nib.Nifti1Image      # the first channel: header and affine of the outputs
    resampled: bool
    first_channel: np.ndarray   # the first channel's voxels on its own grid, as read (no second read)
    affine: np.ndarray | None = None   # the plan grid's affine (``plan.subject_affine``): normalisation
    warnings: tuple[str, ...] = ()     # "<file>: <what was assumed about its geometry>"


def place_case(case: Case, plan: GridPlan = MNI_T1_PLAN) -> PlacedCase:
    """Read the case's channels (every fault an :class:`InputError` naming the file) and place them on
    the plan grid, logging whether they were used as they are or resampled."""
    if case.fault:
        raise InputError(case.fault.partition(": ")[0], case.fault.partition(": ")[2])
    loaded = load_channels(case.channels)
    for warning in loaded.warnings:
        log.warning("%s", warning)
    image, affine = loaded.image, loaded.affine
    native = NativeGrid(tuple(int(s) for s in loaded.images[0].shape), affine)
    resampled = not plan.on_grid(native)
    grid = _grid_name(plan)
    if resampled:
        log.info("%s: grid %s is not %s: resampled onto it (trilinear) and the mask back (linear, >= 0.5)%s",
                 case.name, _describe_grid(native.shape, affine), grid,
                 "; this assumes the image is registered to MNI152NLin2009aSym" if plan == MNI_T1_PLAN else "")
        if not plan.fits(native):
            log.warning("%s: larger than the plan volume %s: cropped to it", case.name, plan.shape)
    else:
        log.info("%s: on %s (%s): used as is", case.name, grid, _describe_grid(native.shape, affine))
    channels = [plan.to_plan(volume, native) for volume in loaded.images]
    if resampled and all(c.min() == c.max() for c in channels):
        raise InputError(case.channels[0][1], f"no overlap with {grid} after resampling"
                                              + (" (is the image registered to MNI space?)" if plan == MNI_T1_PLAN
                                                 else ""))
    volume = channels[0] if len(channels) == 1 else np.stack(channels)
    return PlacedCase(volume, native, image, resampled, loaded.images[0], plan.subject_affine(native),
                      tuple(loaded.warnings))


def _stage_nifti(final: Path, data: np.ndarray, reference: nib.Nifti1Image, dtype) -> Path:
    """``final``'s content written completely under a hidden scratch name beside it (renamed into
    place later, :func:`predict_case`); a write fault is an :class:`InputError` naming ``final``."""
    tmp = scratch_path(final)
    try:
        write_nifti(tmp, data, reference=reference, dtype=dtype)
    except OSError as exc:
        raise InputError(final, f"cannot write ({exc.strerror or exc})") from None
    return tmp


def _stage_table(final: Path, frame: pd.DataFrame) -> Path:
    """As :func:`_stage_nifti`, for a CSV (written in :func:`strokeseg.workdir.write_csv`'s format)."""
    tmp = scratch_path(final)
    try:
        write_csv(frame, tmp)
    except OSError as exc:
        raise InputError(final, f"cannot write ({exc.strerror or exc})") from None
    return tmp


def predict_case(case: Case, predictor: TriPlanarPredictor, options: Options, output: Path,
                 plan: GridPlan = MNI_T1_PLAN, publish=None) -> dict:
    """One CSV row; the case's files appear only when everything before succeeded.

    The files are written completely under hidden scratch names first; ``publish(row)`` (the run's
    CSV writer) is then called with the ``ok`` row, and only then are the files renamed into place,
    so that a mask present always has its ``ok`` row (module docstring). Any fault makes the row
    ``failed`` and leaves none of the case's files."""
    mask_path, probability_path, lesions_path = _outputs(output, case.name)
    row = _failed_row(case, "")
    start = time.perf_counter()
    staged: list[tuple[Path, Path]] = []      # (scratch, final)
    published: list[Path] = []
    try:
        placed = place_case(case, plan)
        row["resampled"] = placed.resampled
        row["warning"] = "; ".join(placed.warnings)
        image, affine, native = placed.image, placed.image.affine, placed.native
        mask, probability = predict_volume(placed.volume, predictor, options.save_probabilities, placed.affine)
        del placed
        mask = plan.mask_to_native(mask, native)
        if probability is not None:
            probability = plan.probability_to_native(probability, native)
        staged.append((_stage_nifti(mask_path, mask, image, np.uint8), mask_path))
        if probability is not None:
            staged.append((_stage_nifti(probability_path, probability, image, np.float32), probability_path))
        # Located on the input's own grid: where the mask is, in the coordinates the user reads.
        note = lesion_report.space_note(case.channels[0][1], image.header, options.space)
        report = lesion_report.lesion_report(mask, affine, note)
        staged.append((_stage_table(lesions_path, report.lesions), lesions_path))
        voxels = int(np.count_nonzero(mask))
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        row.update(status=OK, voxels=voxels, lesion_volume_ml=voxels * voxel_volume_ml(spacing),
                   lesion_count=int(len(component_sizes(mask, options.settings.connectivity))),
                   seconds=round(time.perf_counter() - start, 3), **report.summary)
        if publish is not None:
            publish(row)
        for tmp, final in staged:
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise InputError(final, f"cannot write ({exc.strerror or exc})") from None
            published.append(final)
        if probability is None:
            problems = _remove(probability_path)          # a stale map from an earlier run would not match
            if problems:
                raise InputError(probability_path, f"cannot remove the map of an earlier run ({problems[0]})")
    except Exception as exc:  # one bad case never stops the others
        _remove(*(tmp for tmp, _ in staged), *published, mask_path, probability_path, lesions_path)
        row.update(status=FAILED, voxels=np.nan, lesion_volume_ml=np.nan, lesion_count=np.nan, **_NO_LOCATION)
        row["message"] = str(exc) if isinstance(exc, StrokesegError) else \
            f"{case.input}: unexpected error ({exc.__class__.__name__}: {' '.join(str(exc).split())})"
        log.error("%s", row["message"])
        log.debug("traceback of %s", case.name, exc_info=True)
    except BaseException:     # Ctrl-C, SIGTERM: no scratch left behind, the row stays pending
        _remove(*(tmp for tmp, _ in staged), *published)
        raise
    row["seconds"] = round(time.perf_counter() - start, 3)
    if row["status"] == OK:
        log.info("%s: %d lesion voxels (%.2f mL), %d lesion(s), %.1f s -> %s", case.name, row["voxels"],
                 row["lesion_volume_ml"], row["lesion_count"], row["seconds"], mask_path)
    return row


def write_table(rows: list[dict], path: Path) -> None:
    """``predictions.csv`` (atomically, as every CSV)."""
    write_csv(pd.DataFrame(rows, columns=list(CSV_COLUMNS)), path)


# ------------------------------------------------------------------------------- usage checks
def _argument_kind(path: Path, what: str) -> str | None:
    """What a folder argument is (:func:`strokeseg.data.input_files.irregularity`: ``"a folder"``,
    ``"not found"``, None for a regular file, ...); a broken link, a symbolic link loop or a path that
    cannot be looked up is a :class:`UsageError` naming it."""
    kind = irregularity(path)
    if kind == "a broken symbolic link":
        raise UsageError(f"{path}: dangling symbolic link to {os.readlink(path)} (the {what} folder)")
    if kind == "a symbolic link loop" or (kind or "").startswith("cannot"):
        raise UsageError(f"{path}: {kind}; expected the {what} folder")
    return kind


def check_models_folder(models: Path) -> None:
    """The models folder exists, is a folder and can be listed (else a :class:`UsageError` naming it)."""
    kind = _argument_kind(Path(models), "models")
    if kind == "not found":
        raise UsageError(f"{models}: models folder not found")
    if kind != "a folder":
        raise UsageError(f"{models}: not a folder (--models is the folder of the .keras files)")
    try:
        os.listdir(models)
    except OSError as exc:
        raise UsageError(f"{models}: cannot read the models folder ({exc.strerror or exc})") from None


def check_output_path(output: Path) -> None:
    """What can be said of ``--output`` before anything is written: not a link loop, not a file."""
    if _argument_kind(Path(output), "output") not in ("a folder", "not found"):
        raise UsageError(f"{output}: output exists and is not a folder")


def _check_inputs_survive(cases: list[Case], output: Path) -> None:
    """No input may be one of this run's outputs (it would be removed or overwritten before it is read)."""
    outputs = {os.path.realpath(output / CSV_NAME): "predictions.csv"}
    for case in cases:
        for path in _outputs(output, case.name):
            outputs[os.path.realpath(path)] = f"an output of case {case.name!r}"
    for case in cases:
        for _, path in case.channels:
            what = outputs.get(os.path.realpath(path))
            if what is not None:
                raise UsageError(f"{path}: this input is {what} in the output folder and would be overwritten; "
                                 "use another --output folder")


def _check_writable(output: Path) -> None:
    """Create and remove a scratch file: the output folder takes new files (a read-only folder is a
    :class:`UsageError` before anything is touched). The name is a scratch name, so a run killed
    here leaves nothing the next one does not remove."""
    probe = scratch_path(output / CSV_NAME)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise UsageError(f"{output}: output folder is not writable ({exc.strerror or exc})") from None
    _remove(probe)


def prepare_output(output: Path, cases: list[Case]) -> list[dict]:
    """Steps 1-3 of the module docstring's order: the folder created and checked writable (faults are
    a :class:`UsageError`), a killed run's scratch removed, this run's case outputs of an earlier run
    removed, then ``predictions.csv`` written with every case ``pending`` (``failed`` where an earlier
    output could not be removed). Returns those rows."""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{output}: cannot create the output folder ({exc.strerror or exc})") from None
    table = output / CSV_NAME
    if os.path.lexists(table) and not table.is_file():
        raise UsageError(f"{table}: exists and is not a regular file; move it out of the output folder")
    _check_writable(output)
    remove_leftovers(output)
    rows = []
    for case in cases:
        problems = _remove(*_outputs(output, case.name))
        rows.append(_failed_row(case, f"{problems[0]}: an output of an earlier run is in the way")
                    if problems else _pending_row(case))
    try:
        write_table(rows, table)
    except OSError as exc:
        raise UsageError(f"{table}: cannot write ({exc.strerror or exc})") from None
    return rows


# ---------------------------------------------------------------------------------------- runs
def run(inputs, models: Path, output: Path, options: Options, ensemble: bool = False,
        named_channels: list[str] = ()) -> tuple[int, pd.DataFrame]:
    """Predict every input; returns (exit status 0/1, the CSV table). Usage errors raise UsageError/InputError
    before anything is written (module docstring: the order that keeps the folder and its CSV consistent)."""
    models, output = Path(models), Path(output)
    check_output_path(output)
    check_models_folder(models)
    plan = models_plan(models)
    if not inputs and not named_channels:
        raise UsageError("no input files (give INPUT files or folders, or --channel NAME=FILE)")
    cases = find_cases(inputs, plan.channels, output, list(named_channels))
    _check_inputs_survive(cases, output)
    predictor = load_predictor(models, options, ensemble, plan)   # a model fault: exit 2, nothing written
    rows = prepare_output(output, cases)
    table_path = output / CSV_NAME

    def save(current: list[dict]) -> None:
        try:
            write_table(current, table_path)
        except OSError as exc:
            raise RunError(f"{table_path}: cannot write ({exc.strerror or exc}); the cases after the last "
                           "row written are not processed") from None

    try:
        for i, case in enumerate(cases):
            if rows[i]["status"] != PENDING:
                continue
            log.info("case %d/%d: %s", i + 1, len(cases), case.input)
            rows[i] = predict_case(case, predictor, options, output, plan,
                                   publish=lambda row, i=i: save([*rows[:i], row, *rows[i + 1:]]))
            save(rows)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or stopped: the case under way, whose files were removed, is
        # pending again (best effort: the table was consistent before, too).
        try:
            write_table(rows, table_path)
        except Exception:
            pass
        raise
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    failed = int((table["status"] != OK).sum())
    log.info("%d case(s) ok, %d failed; table %s", len(rows) - failed, failed, table_path)
    return (1 if failed else 0), table


def run_from_args(args: argparse.Namespace) -> int:
    """Exit status: 0 every case ok, 1 some case failed, 2 usage error (one line on stderr)."""
    try:
        options = options_from_args(args)
        configure_tensorflow(onednn_setting(args.models))
        status, _ = run(args.inputs, args.models, args.output, options, ensemble=args.ensemble,
                        named_channels=args.channel)
    except RunError as exc:       # cases were processed; the CSV says which
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StrokesegError as exc:  # UsageError, or a models-folder InputError: nothing was processed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m strokeseg.infer.predict ...`` (the same as ``strokeseg predict ...``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="strokeseg predict",
                                                   description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    try:
        return run_from_args(args)
    except KeyboardInterrupt:   # (strokeseg predict: the CLI says the same)
        print("error: interrupted; cases not processed are 'pending' in predictions.csv", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

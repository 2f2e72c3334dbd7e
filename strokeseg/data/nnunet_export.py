"""``strokeseg export-nnunet``: a finished workdir's cohort as an nnU-Net v2 raw dataset, with our folds.

    strokeseg export-nnunet --workdir W --output DIR --dataset-id N [--name NAME] [--overwrite]

Reads stage 01's cohort.csv (the image channels and mask of every subject), grid_plan.json (the
channels, their kinds and whether the voxel size is known) and manifest.json, stage 02's
subjects_80.csv and subjects_20.csv and stage 04's folds.csv of workdir W, and writes
DIR/DatasetNNN_NAME/ (NNN = the dataset id, 1 to 999, on three digits; NAME letters, digits and
underscores, default StrokesegATLAS):
  imagesTr/<case>_0000.nii.gz, _0001, ...  every 80 % subject (nnU-Net's training set), one file per
  labelsTr/<case>.nii.gz                   channel in the cohort's channel order (ATLAS: _0000 = T1)
  imagesTs/<case>_0000.nii.gz, _0001, ...  the 20 % hold-out (nnU-Net never reads labelsTs;
  labelsTs/<case>.nii.gz                   `strokeseg evaluate` scores against it)
  dataset.json        nnU-Net v2's keys: channel_names {"0": ..., "1": ...}, labels {background 0,
                      lesion 1}, numTraining, file_ending ".nii.gz", name, description (no reader is
                      forced: nnU-Net picks its default reader for .nii.gz); and "strokeseg", a key
                      nnU-Net ignores: the workdir, the cohort's channels and kinds, whether the
                      voxel size is known, the number of folds
  splits_final.json   our stage-04 folds in nnU-Net's format: a list whose entry k-1 is our fold k,
                      {"train": the other 80 % subjects, "val": fold k's subjects}, names sorted; the
                      hold-out is in none of them
  README.txt          how to train nnU-Net on these folds and score it on the hold-out
The case id is our subject id (sub-r001s001). nnU-Net picks a channel's normalisation by its name
in channel_names: a channel of kind ct is named "CT" (nnU-Net's CT normalisation), the cohort's one
T1 channel "T1" (as ATLAS exports always were), every other channel its cohort name (dwi, adc, ...),
which nnU-Net z-scores per image. Images are the channel files as nibabel reads and writes them: own
affine, header and data type. Labels are uint8 {0, 1} with the first channel's header and affine.
Every channel and the mask must lie on the first channel's grid (nnU-Net needs that too): a channel
or mask that does not, or a mask that is not binary, is an error naming the file (masks are
binarised only if stage 01 ran with --binarize-masks; lesion-free masks are exported only where
stage 01 allowed them, as its manifest records). Subjects keep their own grids: nnU-Net resamples.
Where the voxel size is not known (slice folders without --spacing) the files say 1 x 1 x 1, which
nnU-Net takes for 1 mm: a warning says so. Workdirs made before grid plans (no grid_plan.json,
cohort.csv with a t1w column) export their one T1 channel as before. One subject is in memory at
a time.

nnU-Net reads splits_final.json from its preprocessed folder, not from the raw one: copy it to
$nnUNet_preprocessed/DatasetNNN_NAME/ after `nnUNetv2_plan_and_preprocess` and before
`nnUNetv2_train`; README.txt and the command's last lines give the exact commands.

Any fault (a stage not run, an inconsistent CSV, sessions of one patient on both sides of a split,
a bad image or mask, a bad id or name, an existing dataset folder without --overwrite, another
folder of DIR with the same dataset id) is one line "error: <file or option>: <fault>" with exit
status 2, and nothing is left behind: the dataset is written into a hidden staging folder in DIR
and renamed into place when complete; with --overwrite the old folder is moved aside, the new one
renamed in, and the old one removed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from strokeseg.contracts import (
    COHORT_CSV,
    CROSS_VALIDATION,
    DATASET,
    FOLDS_CSV,
    HOLDOUT_SUBJECTS_CSV,
    SPLITTING,
    TRAIN_SUBJECTS_CSV,
)
from strokeseg.data.grid_plan import GRID_PLAN_JSON
from strokeseg.data.nifti import load_channels, write_nifti
from strokeseg.errors import InputError, StrokesegError
from strokeseg.runtime import configure_logging
from strokeseg.scratch import folder_prefix, remove_leftovers
from strokeseg.workdir import grid_plan, manifest, read_csv, require_stage, stage_config

log = logging.getLogger(__name__)

DEFAULT_NAME = "StrokesegATLAS"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")
MIN_ID, MAX_ID = 1, 999
FILE_ENDING = ".nii.gz"
LEGACY_CHANNEL, LEGACY_KIND = "t1w", "t1"          # workdirs made before grid plans: one T1 channel
IMAGES_TR, LABELS_TR, IMAGES_TS, LABELS_TS = "imagesTr", "labelsTr", "imagesTs", "labelsTs"
DATASET_JSON, SPLITS_JSON, README_TXT = "dataset.json", "splits_final.json", "README.txt"
CONFIGURATION = "3d_fullres"
_SAFE_CASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset042_StrokesegATLAS``: nnU-Net's raw dataset folder name."""
    return f"Dataset{dataset_id:03d}_{name}"


def check_dataset_id(value) -> int:
    """The dataset id as an int in 1..999, or a one-line error naming --dataset-id."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text) or not MIN_ID <= int(text) <= MAX_ID:
        raise InputError("--dataset-id", f"{value!r} is not a whole number from {MIN_ID} to {MAX_ID} "
                                         "(nnU-Net dataset ids have three digits)")
    return int(text)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise InputError("--name", f"{name!r}: use letters, digits and underscores only "
                                   "(it becomes the folder name DatasetNNN_<name>)")
    return name


# ------------------------------------------------------------------------------ the workdir's plan
@dataclass(frozen=True)
class Case:
    subject: str
    channels: tuple[tuple[str, Path], ...]  # (channel name, file), in the cohort's channel order
    mask: Path


@dataclass(frozen=True)
class ExportPlan:
    train: tuple[Case, ...]             # the 80 % subjects, sorted by id
    holdout: tuple[Case, ...]           # the 20 % subjects, sorted by id
    folds: tuple[tuple[str, ...], ...]  # folds[k - 1]: our fold k's subjects, sorted
    channels: tuple[str, ...]           # stage 01's grid plan: channel names, in input order
    channel_kinds: tuple[str, ...]      # and their kinds (t1, mr, ct, image8)
    spacing_known: bool                 # False: voxel sizes are placeholders (1 x 1 x 1)
    binarize: bool                      # stage 01's dataset.binarize_masks
    allow_empty: bool                   # stage 01's manifest: lesion-free subjects belong to the cohort
    source: str                         # stage 01's reader: atlas, isles22, nnunet, ...
    synthetic: bool

    def splits(self) -> list[dict]:
        """nnU-Net's splits_final.json: entry k-1 = our fold k as validation, the other folds as training."""
        everyone = sorted(case.subject for case in self.train)
        return [{"train": [s for s in everyone if s not in val], "val": sorted(val)} for val in map(set, self.folds)]


def _subject_list(path: Path) -> list[str]:
    frame = read_csv(path, required=("subject_name",), dtype={"subject_name": str})
    names = frame["subject_name"].tolist()
    _unique(names, path)
    return names


def _unique(names: list, path: Path) -> None:
    seen = set()
    for name in names:
        if not isinstance(name, str) or not _SAFE_CASE.fullmatch(name):
            raise InputError(path, f"subject id {name!r} cannot be an nnU-Net case id (expected letters, digits, "
                                   "'.', '_' or '-', not starting with '.')")
        if name in seen:
            raise InputError(path, f"subject {name} is listed twice")
        seen.add(name)


def read_plan(workdir: Path) -> ExportPlan:
    """Channels, cohort, hold-out split and folds of a workdir, checked against each other."""
    workdir = Path(workdir)
    dataset, splitting, cross_validation = (require_stage(workdir, s) for s in (DATASET, SPLITTING, CROSS_VALIDATION))
    channels, kinds, spacing_known = _channels(workdir, dataset)
    cases, groups = _cohort(dataset / COHORT_CSV, channels)
    train, holdout = _split(splitting, cases, dataset / COHORT_CSV)
    folds = _folds(cross_validation / FOLDS_CSV, train, splitting / TRAIN_SUBJECTS_CSV)
    _check_groups(groups, holdout, folds, splitting / HOLDOUT_SUBJECTS_CSV, cross_validation / FOLDS_CSV)
    record = manifest(workdir, DATASET)
    return ExportPlan(train=tuple(cases[s] for s in sorted(train)), holdout=tuple(cases[s] for s in sorted(holdout)),
                      folds=folds, channels=channels, channel_kinds=kinds, spacing_known=spacing_known,
                      binarize=stage_config(workdir, DATASET).dataset.binarize_masks,
                      allow_empty=bool(record.get("allow_empty_masks", False)),
                      source=str(record.get("dataset", "atlas")),   # manifests before readers: ATLAS
                      synthetic=bool(record.get("synthetic_data", False)))


def _channels(workdir: Path, dataset: Path) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(channel names, their kinds, whether the voxel size is known) from stage 01's grid plan; a workdir
    made before grid plans has none and one T1 channel, cohort.csv's t1w column."""
    path = dataset / GRID_PLAN_JSON
    if not path.exists():
        return (LEGACY_CHANNEL,), (LEGACY_KIND,), True
    plan = grid_plan(workdir)
    if not plan.channels or len(plan.channels) != len(plan.channel_kinds):
        raise InputError(path, f"channels {list(plan.channels)} and channel_kinds {list(plan.channel_kinds)}: "
                               "expected one kind per channel and at least one channel")
    return tuple(plan.channels), tuple(plan.channel_kinds), plan.spacing_known


def _cohort(path: Path, channels: tuple[str, ...]) -> tuple[dict[str, Case], dict[str, str]]:
    """Every subject's case, and its group (the patient) where cohort.csv has a group column."""
    cohort = read_csv(path, required=("subject_name", *channels, "mask"), dtype=str, keep_default_na=False)
    _unique(cohort["subject_name"].tolist(), path)
    cases, groups = {}, {}
    for row in cohort.to_dict("records"):      # not itertuples: channel names need not be identifiers
        subject = row["subject_name"]
        for column in (*channels, "mask"):
            if not row[column].strip():        # Path("") would be the current folder
                raise InputError(path, f"subject {subject} has no {column} file")
        cases[subject] = Case(subject, tuple((c, Path(row[c])) for c in channels), Path(row["mask"]))
        if row.get("group"):
            groups[subject] = row["group"]
    return cases, groups


def _split(splitting: Path, cases: dict[str, Case], cohort_csv: Path) -> tuple[list[str], list[str]]:
    """The 80 % and 20 % subjects of stage 02, all in the cohort and none in both."""
    train_csv, holdout_csv = splitting / TRAIN_SUBJECTS_CSV, splitting / HOLDOUT_SUBJECTS_CSV
    train, holdout = _subject_list(train_csv), _subject_list(holdout_csv)
    for path, names in ((train_csv, train), (holdout_csv, holdout)):
        for name in names:
            if name not in cases:
                raise InputError(path, f"subject {name} is not in {cohort_csv}")
    both = sorted(set(train) & set(holdout))
    if both:
        raise InputError(holdout_csv, f"subject {both[0]} is also in {train_csv}")
    if not train or not holdout:
        raise InputError(train_csv if not train else holdout_csv, "no subjects")
    unsplit = len(cases) - len(train) - len(holdout)
    if unsplit:
        log.warning("%d subject(s) of %s are in neither %s nor %s: not exported", unsplit, cohort_csv,
                    TRAIN_SUBJECTS_CSV, HOLDOUT_SUBJECTS_CSV)
    return train, holdout


def _folds(folds_csv: Path, train: list[str], train_csv: Path) -> tuple[tuple[str, ...], ...]:
    """Stage 04's folds 1..k (k >= 2) of exactly the 80 % subjects: folds[k - 1] = fold k's subjects, sorted."""
    folds = read_csv(folds_csv, required=("subject_name", "fold"), dtype={"subject_name": str})
    _unique(folds["subject_name"].tolist(), folds_csv)
    if not pd.api.types.is_integer_dtype(folds["fold"]):
        raise InputError(folds_csv, "column fold is not whole numbers")
    fold_of = dict(zip(folds["subject_name"], folds["fold"].astype(int)))
    for name in train:
        if name not in fold_of:
            raise InputError(folds_csv, f"subject {name} of {train_csv} has no fold")
    in_train = set(train)
    for name in fold_of:
        if name not in in_train:
            raise InputError(folds_csv, f"subject {name} is not in {train_csv}")
    k = max(fold_of.values())
    if sorted(set(fold_of.values())) != list(range(1, k + 1)) or k < 2:
        raise InputError(folds_csv, f"folds {sorted(set(fold_of.values()))}, expected 1..k with k >= 2 and "
                                    "every fold used")
    return tuple(tuple(sorted(s for s, f in fold_of.items() if f == fold)) for fold in range(1, k + 1))


def _check_groups(groups: dict[str, str], holdout: list[str], folds: tuple[tuple[str, ...], ...],
                  holdout_csv: Path, folds_csv: Path) -> None:
    """Sessions of one patient (cohort.csv's group) on one side of the hold-out split and in one fold, as
    stages 02 and 04 draw them: else nnU-Net would validate, or we would score, on a patient it trained on.
    A subject without a group is its own patient."""
    held = {groups.get(s, s): s for s in holdout}
    fold_of_group: dict[str, tuple[int, str]] = {}
    for k, members in enumerate(folds, start=1):
        for subject in members:
            group = groups.get(subject, subject)
            if group in held:
                raise InputError(holdout_csv, f"subject {held[group]} is held out but {subject} of the same patient "
                                              f"({group}) is in the 80 %")
            first_fold, first = fold_of_group.setdefault(group, (k, subject))
            if first_fold != k:
                raise InputError(folds_csv, f"subjects {first} (fold {first_fold}) and {subject} (fold {k}) are "
                                            f"sessions of one patient ({group}) in two folds")


# ----------------------------------------------------------------------------------- the files
def channel_file(case: str, index: int) -> str:
    """``<case>_0001.nii.gz``: nnU-Net's file of channel ``index`` (0-based) of a case."""
    return f"{case}_{index:04d}{FILE_ENDING}"


def export_case(case: Case, images: Path, labels: Path, binarize: bool = False, allow_empty: bool = False) -> None:
    """``images/<case>_0000.nii.gz``, ``_0001``, ... (each channel as it is, in the case's channel order) and
    ``labels/<case>.nii.gz`` (uint8 {0, 1} on the first channel's header and affine). Faults name the file
    (:func:`load_channels`: channels and mask on the first channel's grid, a binary mask, lesion-free only
    when ``allow_empty``)."""
    volumes = load_channels(case.channels, case.mask, binarize=binarize, allow_empty=allow_empty)
    for index, ((_, path), data) in enumerate(zip(case.channels, volumes.images)):
        # The first channel's image holds the file's values as read; the others are rebuilt from their headers.
        stored = as_stored(data, path, volumes.image if index == 0 else None)
        nib.save(stored, images / channel_file(case.subject, index))
    write_nifti(labels / f"{case.subject}{FILE_ENDING}", volumes.mask, reference=volumes.image, dtype=np.uint8)


def as_stored(data: np.ndarray, path: Path, image: nib.Nifti1Image | None = None) -> nib.Nifti1Image:
    """The image to write for a channel whose voxels :func:`load_channels` (or ``load_t1``) read as ``data``,
    with the file's header and affine. ``image``: the image ``load_t1`` returned for it, when at hand.

    When the file scales its stored values (``scl_slope``/``scl_inter``, which nibabel applies on
    reading), the image holds its stored values with the file's scaling, so that they are written back
    exactly rather than re-quantised under a new scaling. A floating-point file wider than float32 (the
    values ``load_t1`` keeps) is read again rather than written from its rounded values."""
    try:
        header = nib.load(path)                 # the header only: the voxels were read by load_t1
    except (OSError, ValueError, EOFError, ImageFileError, HeaderDataError) as exc:
        raise InputError(path, f"unreadable header ({exc.__class__.__name__}: {' '.join(str(exc).split())})") from None
    proxy, dtype = header.dataobj, header.get_data_dtype()
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if (slope, inter) == (1.0, 0.0) or not (np.isfinite(slope) and np.isfinite(inter) and slope != 0):
        if image is not None:
            return image
        if dtype.kind == "f" and data.dtype.kind == "f" and dtype.itemsize > data.dtype.itemsize:
            data = np.asanyarray(proxy)
        return header.__class__(data, header.affine, header.header)
    stored = (np.asarray(data, dtype=np.float64) - inter) / slope
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        stored = np.clip(np.rint(stored), limits.min, limits.max)
    out = header.__class__(stored.astype(dtype), header.affine, header.header)
    out.header.set_slope_inter(slope, inter)
    return out


def nnunet_channel_names(channels: tuple[str, ...], kinds: tuple[str, ...]) -> dict[str, str]:
    """dataset.json's channel_names. nnU-Net picks each channel's normalisation by its name: "CT" its CT
    normalisation (clipped to the dataset's foreground percentiles), any name it has no scheme for a
    z-score per image. A cohort's one T1 channel keeps the name ATLAS exports always gave it."""
    one_t1 = kinds.count("t1") == 1
    return {str(i): "CT" if kind == "ct" else "T1" if kind == "t1" and one_t1 else name
            for i, (name, kind) in enumerate(zip(channels, kinds))}


def _normalisation(nnunet_name: str) -> str:
    return "nnU-Net's CT normalisation" if nnunet_name == "CT" else "z-score per image"


def dataset_json(plan: ExportPlan, name: str, workdir: Path) -> dict:
    cohort = "ATLAS v2.0" if plan.source == "atlas" else plan.source
    source = f"a SYNTHETIC {cohort}-like cohort" if plan.synthetic else f"the {cohort} cohort"
    return {
        "channel_names": nnunet_channel_names(plan.channels, plan.channel_kinds),
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(plan.train),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (f"Stroke lesion segmentation on {source} (channels {', '.join(plan.channels)}): "
                        f"{len(plan.train)} training subjects (imagesTr, labelsTr), {len(plan.holdout)} hold-out "
                        f"subjects (imagesTs, labelsTs); exported by strokeseg from {workdir}; folds = strokeseg "
                        f"stage 04 ({len(plan.folds)} folds, {SPLITS_JSON})"),
        # Not an nnU-Net key (nnU-Net reads only its own): what the export came from, for people and scripts.
        "strokeseg": {"workdir": str(workdir), "dataset": plan.source, "synthetic_data": plan.synthetic,
                      "channels": list(plan.channels), "channel_kinds": list(plan.channel_kinds),
                      "spacing_known": plan.spacing_known, "n_folds": len(plan.folds)},
    }


def instructions(output: Path, dataset_id: int, folder: str, plan: ExportPlan) -> str:
    """What to do with the export: the text of README.txt and the command's last lines."""
    root = output / folder
    folds = " ".join(str(f) for f in range(len(plan.folds)))
    names = nnunet_channel_names(plan.channels, plan.channel_kinds)
    channels = "\n".join(f'  <case>_{i:04d}{FILE_ENDING}  {channel}  (channel_names "{names[str(i)]}": '
                         f"{_normalisation(names[str(i)])})" for i, channel in enumerate(plan.channels))
    spacing = "" if plan.spacing_known else (
        "\nThe voxel size of this cohort is NOT known (slice folders read without --spacing): the files say\n"
        "1 x 1 x 1 and nnU-Net treats the voxels as 1 mm; its spacings and patch sizes are in voxels.\n")
    return f"""nnU-Net v2 raw dataset {folder}, exported by strokeseg with the study's own folds.

imagesTr/ and labelsTr/ hold the 80 % subjects nnU-Net trains on; imagesTs/ holds the hold-out (20 %)
and labelsTs/ its reference masks, which nnU-Net does not read.

Each case has {len(plan.channels)} image file(s), one per channel, on the case's own grid:
{channels}
{spacing}
nnU-Net reads splits_final.json from its PREPROCESSED folder, not from this raw folder. So:
  1. export nnUNet_raw={output}
     (and nnUNet_preprocessed, nnUNet_results: folders of your choice)
  2. nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity
  3. cp {root / SPLITS_JSON} "$nnUNet_preprocessed/{folder}/{SPLITS_JSON}"
     (after step 2, which creates that folder, and before any training; recent nnU-Net versions copy
     it from this folder at step 2 themselves, and the cp then changes nothing)
  4. nnUNetv2_train {dataset_id} {CONFIGURATION} FOLD   for FOLD in {folds}
     (nnU-Net fold k-1 = strokeseg fold k; the hold-out is in no fold)
  5. nnUNetv2_predict -i {root / IMAGES_TS} -o PREDICTIONS -d {dataset_id} -c {CONFIGURATION} -f {folds}
     (-f: nnU-Net's default is folds 0-4)
Score nnU-Net's hold-out predictions as stage 10 scores ours:
  strokeseg evaluate PREDICTIONS --reference {root / LABELS_TS} --output EVALUATION
"""

# ------------------------------------------------------------------------------------- the run
def _make_output(output: Path) -> list[Path]:
    """Create ``output`` (and missing parents); returns the folders created, deepest first."""
    created = []
    for folder in (output, *output.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(output, f"cannot create the output folder ({exc.__class__.__name__}: {exc})") from None
    return created


def _same_id_folders(output: Path, dataset_id: int, folder: str) -> list[Path]:
    prefix = dataset_folder_name(dataset_id, "")
    return sorted(p for p in output.iterdir() if p.name.startswith(prefix) and p.name != folder and p.is_dir())


def export(workdir, output, dataset_id, name: str = DEFAULT_NAME, overwrite: bool = False,
           progress: bool = True) -> Path:
    """Write the nnU-Net raw dataset; returns its folder. Any fault raises :class:`StrokesegError` and
    leaves ``output`` as it was."""
    dataset_id, name = check_dataset_id(dataset_id), check_name(name)
    workdir, output = Path(workdir).expanduser().resolve(), Path(output).expanduser().resolve()
    plan = read_plan(workdir)
    if not plan.spacing_known:
        log.warning("%s: the voxel size of this cohort is not known (slice folders read without --spacing): the "
                    "exported files say 1 x 1 x 1, and nnU-Net will treat the voxels as 1 mm",
                    workdir / DATASET / GRID_PLAN_JSON)
    folder = dataset_folder_name(dataset_id, name)
    target = output / folder
    if output.exists() and not output.is_dir():
        raise InputError(output, "output exists and is not a folder")
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise InputError(target, "exists and is not a folder")
        if not overwrite:
            raise InputError(target, "dataset folder exists; pass --overwrite to replace it")
    if output.is_dir():
        clash = _same_id_folders(output, dataset_id, folder)
        if clash:
            raise InputError(clash[0], f"has dataset id {dataset_id} too (nnU-Net needs one folder per id); "
                                       "choose another --dataset-id or remove that folder")

    created = _make_output(output)
    remove_leftovers(output)   # the staging or old folder of an export that was killed
    # A unique hidden name made by mkdir, not mkdtemp: the dataset gets the usual permissions (umask). It
    # names its owner (strokeseg.scratch), so a later export removes it if this one is killed.
    staging = output / f"{folder_prefix('staging')}{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise InputError(output, f"output folder is not writable ({exc.__class__.__name__}: {exc})") from None
    try:
        _write(staging, plan, name, workdir, progress)
        (staging / README_TXT).write_text(instructions(output, dataset_id, folder, plan))
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    log.info("wrote %s: %d training and %d hold-out cases of %d channel(s) (%s), %d folds", target, len(plan.train),
             len(plan.holdout), len(plan.channels), ", ".join(plan.channels), len(plan.folds))
    return target


def _write(staging: Path, plan: ExportPlan, name: str, workdir: Path, progress: bool) -> None:
    from tqdm import tqdm

    for sub in (IMAGES_TR, LABELS_TR, IMAGES_TS, LABELS_TS):
        (staging / sub).mkdir()
    jobs = ([(case, IMAGES_TR, LABELS_TR) for case in plan.train]
            + [(case, IMAGES_TS, LABELS_TS) for case in plan.holdout])
    for case, images, labels in tqdm(jobs, desc="export-nnunet", unit="case", disable=not progress, leave=False):
        export_case(case, staging / images, staging / labels, plan.binarize, plan.allow_empty)
    (staging / DATASET_JSON).write_text(json.dumps(dataset_json(plan, name, workdir), indent=4) + "\n")
    (staging / SPLITS_JSON).write_text(json.dumps(plan.splits(), indent=4) + "\n")


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished staging folder onto ``target``; an existing ``target`` is moved aside first
    and put back if the rename fails, then removed."""
    if not target.exists():
        os.replace(staging, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=folder_prefix("trash"), dir=target.parent))
    try:
        os.replace(target, trash / target.name)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(trash / target.name, target)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# ------------------------------------------------------------------------------- command line
HELP = "write a finished workdir's cohort as an nnU-Net v2 raw dataset with the study's folds and hold-out"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``strokeseg export-nnunet`` options; the help's epilog is this module's documentation."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (__doc__ or "\n\n\n\n").split("\n\n", 2)[2]
    parser.add_argument("--workdir", type=Path, required=True, metavar="W",
                        help="workdir with stages 01, 02 and 04 done (read only)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="nnU-Net raw folder (nnUNet_raw) to write DatasetNNN_NAME/ into; created if missing")
    parser.add_argument("--dataset-id", required=True, metavar="N",
                        help=f"nnU-Net dataset id, {MIN_ID} to {MAX_ID} (the NNN of DatasetNNN_NAME)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="dataset name: letters, digits and underscores (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DIR/DatasetNNN_NAME/ (else an error)")
    if "--quiet" not in parser._option_string_actions:  # the strokeseg CLI may add its own
        parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Exit status 0 (and the instructions on stdout), or 2 with one line ``error: ...`` on stderr."""
    try:
        target = export(args.workdir, args.output, args.dataset_id, name=args.name, overwrite=args.overwrite,
                        progress=not args.quiet)
    except StrokesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print((target / README_TXT).read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m strokeseg.data.nnunet_export ...`` (the same as ``strokeseg export-nnunet ...``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="strokeseg export-nnunet", description=HELP))
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())

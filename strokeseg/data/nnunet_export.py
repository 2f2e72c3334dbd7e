"""``strokeseg export-nnunet``: a finished workdir's cohort as an nnU-Net v2 raw dataset, with our folds.

    strokeseg export-nnunet --workdir W --output DIR --dataset-id N [--name NAME] [--overwrite]

Reads stage 01's cohort.csv (T1 and mask of every subject), stage 02's subjects_80.csv and
subjects_20.csv and stage 04's folds.csv of workdir W, and writes DIR/DatasetNNN_NAME/ (NNN = the
dataset id, 1 to 999, on three digits; NAME letters, digits and underscores, default
StrokesegATLAS):
  imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz   every 80 % subject (nnU-Net's training set)
  imagesTs/<case>_0000.nii.gz, labelsTs/<case>.nii.gz   the 20 % hold-out (nnU-Net never reads
                                                        labelsTs; `strokeseg evaluate` scores against it)
  dataset.json        nnU-Net v2's keys: channel_names {"0": "T1"}, labels {background 0, lesion 1},
                      numTraining, file_ending ".nii.gz", name, description (no reader is forced:
                      nnU-Net picks its default reader for .nii.gz)
  splits_final.json   our stage-04 folds in nnU-Net's format: a list whose entry k-1 is our fold k,
                      {"train": the other 80 % subjects, "val": fold k's subjects}, names sorted; the
                      hold-out is in none of them
  README.txt          how to train nnU-Net on these folds and score it on the hold-out
The case id is our subject id (sub-r001s001). Images are the T1 files as nibabel reads and writes
them: own affine, header and data type. Labels are uint8 {0, 1} with the T1's header and affine; a
mask that is not binary, or not on its T1's grid, is an error naming the file (masks are binarised
only if stage 01 ran with --binarize-masks, as it recorded). One subject is in memory at a time.

nnU-Net reads splits_final.json from its preprocessed folder, not from the raw one: copy it to
$nnUNet_preprocessed/DatasetNNN_NAME/ after `nnUNetv2_plan_and_preprocess` and before
`nnUNetv2_train`; README.txt and the command's last lines give the exact commands.

Any fault (a stage not run, an inconsistent CSV, a bad T1 or mask, a bad id or name, an existing
dataset folder without --overwrite, another folder of DIR with the same dataset id) is one line
"error: <file or option>: <fault>" with exit status 2, and nothing is left behind: the dataset is
written into a hidden staging folder in DIR and renamed into place when complete; with
--overwrite the old folder is moved aside, the new one renamed in, and the old one removed.
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
from strokeseg.data.nifti import load_mask, load_t1, write_nifti
from strokeseg.errors import InputError, StrokesegError
from strokeseg.runtime import configure_logging
from strokeseg.workdir import is_synthetic_run, read_csv, require_stage, stage_config

log = logging.getLogger(__name__)

DEFAULT_NAME = "StrokesegATLAS"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_]+")
MIN_ID, MAX_ID = 1, 999
FILE_ENDING = ".nii.gz"
CHANNEL = "0000"                                  # the one input channel: the T1
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
    t1w: Path
    mask: Path


@dataclass(frozen=True)
class ExportPlan:
    train: tuple[Case, ...]             # the 80 % subjects, sorted by id
    holdout: tuple[Case, ...]           # the 20 % subjects, sorted by id
    folds: tuple[tuple[str, ...], ...]  # folds[k - 1]: our fold k's subjects, sorted
    binarize: bool                      # stage 01's dataset.binarize_masks
    synthetic: bool

    def splits(self) -> list[dict]:
        """nnU-Net's splits_final.json: entry k-1 = our fold k as validation, the other folds as training."""
        everyone = sorted(case.subject for case in self.train)
        return [{"train": [s for s in everyone if s not in val], "val": sorted(val)} for val in map(set, self.folds)]


def _columns(frame: pd.DataFrame, path: Path, wanted: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    return frame


def _subject_list(path: Path) -> list[str]:
    frame = _columns(read_csv(path, dtype={"subject_name": str}), path, ("subject_name",))
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
    """Cohort, hold-out split and folds of a workdir, checked against each other."""
    workdir = Path(workdir)
    dataset, splitting, cross_validation = (require_stage(workdir, s) for s in (DATASET, SPLITTING, CROSS_VALIDATION))
    cohort_csv = dataset / COHORT_CSV
    cohort = _columns(read_csv(cohort_csv, dtype=str, keep_default_na=False), cohort_csv,
                      ("subject_name", "t1w", "mask"))
    _unique(cohort["subject_name"].tolist(), cohort_csv)
    files = {row.subject_name: Case(row.subject_name, Path(row.t1w), Path(row.mask)) for row in cohort.itertuples()}

    train_csv, holdout_csv = splitting / TRAIN_SUBJECTS_CSV, splitting / HOLDOUT_SUBJECTS_CSV
    train, holdout = _subject_list(train_csv), _subject_list(holdout_csv)
    for path, names in ((train_csv, train), (holdout_csv, holdout)):
        for name in names:
            if name not in files:
                raise InputError(path, f"subject {name} is not in {cohort_csv}")
    both = sorted(set(train) & set(holdout))
    if both:
        raise InputError(holdout_csv, f"subject {both[0]} is also in {train_csv}")
    if not train or not holdout:
        raise InputError(train_csv if not train else holdout_csv, "no subjects")
    unsplit = len(files) - len(train) - len(holdout)
    if unsplit:
        log.warning("%d subject(s) of %s are in neither %s nor %s: not exported", unsplit, cohort_csv,
                    TRAIN_SUBJECTS_CSV, HOLDOUT_SUBJECTS_CSV)

    folds_csv = cross_validation / FOLDS_CSV
    folds = _columns(read_csv(folds_csv, dtype={"subject_name": str}), folds_csv, ("subject_name", "fold"))
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
    members = tuple(tuple(sorted(s for s, f in fold_of.items() if f == fold)) for fold in range(1, k + 1))
    return ExportPlan(train=tuple(files[s] for s in sorted(train)), holdout=tuple(files[s] for s in sorted(holdout)),
                      folds=members,
                      binarize=stage_config(workdir, DATASET).dataset.binarize_masks,
                      synthetic=is_synthetic_run(workdir))


# ----------------------------------------------------------------------------------- the files
def export_case(case: Case, images: Path, labels: Path, binarize: bool = False) -> None:
    """``images/<case>_0000.nii.gz`` (the T1 as it is) and ``labels/<case>.nii.gz`` (uint8 {0, 1} on
    the T1's header and affine). Faults name the file (:func:`load_t1`, :func:`load_mask`)."""
    t1, image = load_t1(case.t1w)
    mask = load_mask(case.mask, binarize=binarize, shape=t1.shape, affine=np.asarray(image.affine, np.float64))
    nib.save(as_stored(t1, image, case.t1w), images / f"{case.subject}_{CHANNEL}{FILE_ENDING}")
    write_nifti(labels / f"{case.subject}{FILE_ENDING}", mask, reference=image, dtype=np.uint8)


def as_stored(t1: np.ndarray, image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """The image to write for a T1 read by :func:`load_t1`: the image itself, or, when the file
    scales its stored values (``scl_slope``/``scl_inter``, which nibabel applies on reading), its
    stored values with the file's scaling, so that they are written back exactly rather than
    re-quantised under a new scaling."""
    try:
        proxy = nib.load(path).dataobj          # the header only: the voxels were read by load_t1
    except (OSError, ValueError, EOFError, ImageFileError, HeaderDataError) as exc:
        raise InputError(path, f"unreadable header ({exc.__class__.__name__}: {' '.join(str(exc).split())})") from None
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if (slope, inter) == (1.0, 0.0) or not (np.isfinite(slope) and np.isfinite(inter) and slope != 0):
        return image
    dtype = image.get_data_dtype()
    stored = (np.asarray(t1, dtype=np.float64) - inter) / slope
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        stored = np.clip(np.rint(stored), limits.min, limits.max)
    out = image.__class__(stored.astype(dtype), image.affine, image.header)
    out.header.set_slope_inter(slope, inter)
    return out


def dataset_json(plan: ExportPlan, name: str, workdir: Path) -> dict:
    source = "a SYNTHETIC ATLAS-like cohort" if plan.synthetic else "ATLAS v2.0 T1w"
    return {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(plan.train),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (f"Stroke lesion segmentation on {source}: {len(plan.train)} training subjects (imagesTr, "
                        f"labelsTr), {len(plan.holdout)} hold-out subjects (imagesTs, labelsTs); exported by "
                        f"strokeseg from {workdir}; folds = strokeseg stage 04 ({len(plan.folds)} folds, "
                        f"{SPLITS_JSON})"),
    }


def instructions(output: Path, dataset_id: int, folder: str, n_folds: int) -> str:
    """What to do with the export: the text of README.txt and the command's last lines."""
    root = output / folder
    folds = " ".join(str(f) for f in range(n_folds))
    return f"""nnU-Net v2 raw dataset {folder}, exported by strokeseg with the study's own folds.

imagesTr/ and labelsTr/ hold the 80 % subjects nnU-Net trains on; imagesTs/ holds the hold-out (20 %)
and labelsTs/ its reference masks, which nnU-Net does not read.

nnU-Net reads splits_final.json from its PREPROCESSED folder, not from this raw folder. So:
  1. export nnUNet_raw={output}
     (and nnUNet_preprocessed, nnUNet_results: folders of your choice)
  2. nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity
  3. cp {root / SPLITS_JSON} "$nnUNet_preprocessed/{folder}/{SPLITS_JSON}"
     (after step 2, which creates that folder, and before any training)
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
    # A unique hidden name made by mkdir, not mkdtemp: the dataset gets the usual permissions (umask).
    staging = output / f".{folder}.staging-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
    except OSError as exc:
        _remove_empty(created)
        raise InputError(output, f"output folder is not writable ({exc.__class__.__name__}: {exc})") from None
    try:
        _write(staging, plan, name, workdir, progress)
        (staging / README_TXT).write_text(instructions(output, dataset_id, folder, len(plan.folds)))
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    log.info("wrote %s: %d training and %d hold-out cases, %d folds", target, len(plan.train), len(plan.holdout),
             len(plan.folds))
    return target


def _write(staging: Path, plan: ExportPlan, name: str, workdir: Path, progress: bool) -> None:
    from tqdm import tqdm

    for sub in (IMAGES_TR, LABELS_TR, IMAGES_TS, LABELS_TS):
        (staging / sub).mkdir()
    jobs = ([(case, IMAGES_TR, LABELS_TR) for case in plan.train]
            + [(case, IMAGES_TS, LABELS_TS) for case in plan.holdout])
    for case, images, labels in tqdm(jobs, desc="export-nnunet", unit="case", disable=not progress, leave=False):
        export_case(case, staging / images, staging / labels, plan.binarize)
    (staging / DATASET_JSON).write_text(json.dumps(dataset_json(plan, name, workdir), indent=4) + "\n")
    (staging / SPLITS_JSON).write_text(json.dumps(plan.splits(), indent=4) + "\n")


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished staging folder onto ``target``; an existing ``target`` is moved aside first
    and put back if the rename fails, then removed."""
    if not target.exists():
        os.replace(staging, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
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

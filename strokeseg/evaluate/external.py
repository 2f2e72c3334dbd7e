"""``strokeseg evaluate``: a folder of predicted lesion masks scored against a folder of reference masks.

    strokeseg evaluate PRED_DIR --reference REF_DIR --output DIR [--against OTHER_DIR] [--resample]

Masks from any tool (stage 10, strokeseg predict, nnU-Net, MONAI, ...) get exactly stage 10's
per-subject 3-D metrics (subject_metrics with 6-connectivity; HD95 and mL from the reference
file's header voxel size) and the same tables: subjects.csv (one row per case and predictions
folder, with the reference lesion's volume bin by voxel count and the default volume bins
0/5000/30000/60000/100000/200000/inf), summary.csv and by_volume_bin.csv. Dice is given under
both empty-mask conventions: `dice` is ATLAS's (stage 10's: a case whose prediction and
reference are both empty scores 1) and `dice_nnunet` is nnU-Net's (such a case is left out: NaN,
ignored by the summaries). The `mask` column names the predictions folder (its folder name; its
parent folders are added when PRED_DIR and OTHER_DIR share a name). With --against OTHER_DIR,
OTHER_DIR is scored too and paired_comparison.csv holds, per metric, the paired two-sided
Wilcoxon signed-rank test of PRED_DIR against OTHER_DIR on the same cases (mean_difference =
PRED_DIR - OTHER_DIR).

Case matching. Cases are matched by id. A file's id is its name
  1. without .nii.gz / .nii;
  2. if it starts with "sub-" (BIDS-like): only its sub-<label> entity, everything before the
     first "_" (stage 10's sub-r001s001_fused_mask.nii.gz and ATLAS's
     sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz are both
     sub-r001s001);
  3. otherwise without one producer suffix, the first of _fused_mask (stage 10), _mask
     (strokeseg predict, ATLAS), _seg (MONAI SaveImage), _msk (ISLES'22) that ends it (any
     letter case): case_7_seg -> case_7; nnU-Net's <case>.nii.gz is <case>.
Folders are searched recursively (MONAI writes <out>/<case>/<case>_seg.nii.gz); hidden files and
folders are skipped and only .nii/.nii.gz files are read, so nnU-Net's plans.json, dataset.json,
predict_from_raw_data_args.json and per-case .npz/.pkl files are ignored. In REF_DIR, images
that are not masks are skipped: names ending (any letter case) in _T1w, _T2w, _FLAIR, _dwi or
_adc, and nnU-Net channel images <case>_0000 ... <case>_9999 that lie in a folder whose name
starts with "images" (imagesTr, imagesTs) or whose <case> is also a file of the tree (a label
amos_0001 in labelsTr stays a mask), so an ATLAS tree, an nnU-Net labelsTr folder or a whole
nnU-Net dataset folder can be given as it is. Two files with one id in one folder, a reference
case with no prediction and a prediction with no reference are errors.

Masks must hold only 0 and 1 (never binarised silently) and lie on the reference's grid (same
shape and affine); --resample instead moves a prediction on another grid onto the reference grid
through world coordinates with nearest neighbour (logged per case). Any fault is one line
"error: <file>: <fault>" with exit status 2, and then nothing is written: every case is scored
before the first table is written, and each table is written atomically. --output is required
(PRED_DIR may be read-only, and a default folder would silently take another evaluation's place);
it is created if missing, its tables are replaced, and a paired_comparison.csv of an earlier run
is removed when --against is not given.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from strokeseg.config import VOLUME_BIN_EDGES
from strokeseg.contracts import BY_VOLUME_BIN_CSV, SUBJECTS_CSV, SUMMARY_CSV
from strokeseg.data.nifti import load_mask_image, same_affine
from strokeseg.data.resample import to_grid
from strokeseg.errors import InputError, StrokesegError
from strokeseg.evaluate.volume_metrics import METRIC_KEYS, subject_metrics
from strokeseg.infer.fusion import FusionSettings
from strokeseg.protocol.bins import assign_bins
from strokeseg.runtime import configure_logging
from strokeseg.workdir import write_csv

log = logging.getLogger("strokeseg.evaluate.external")

PAIRED_COMPARISON_CSV = "paired_comparison.csv"
CONNECTIVITY = FusionSettings().connectivity     # stage 10's (ATLAS) lesion components
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
PRODUCER_SUFFIXES = ("_fused_mask", "_mask", "_seg", "_msk")   # stage 10, predict/ATLAS, MONAI, ISLES'22
NOT_MASK_SUFFIXES = ("_t1w", "_t2w", "_flair", "_dwi", "_adc")  # compared in lower case
CHANNEL_SUFFIX = re.compile(r"_[0-9]{4}$")        # nnU-Net <case>_0000 ... <case>_9999
DICE_NNUNET = "dice_nnunet"


def with_nnunet_dice(metrics) -> tuple[str, ...]:
    """``metrics`` with :data:`DICE_NNUNET` right after ``dice``."""
    return tuple(k for key in metrics for k in ((key, DICE_NNUNET) if key == "dice" else (key,)))


SUBJECT_METRICS = with_nnunet_dice(METRIC_KEYS)    # subjects.csv: every metric of stage 10, and nnU-Net's Dice


# --------------------------------------------------------------------------------- case ids
def _stem(name: str) -> str:
    for extension in NIFTI_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_EXTENSIONS)


def case_id(path) -> str:
    """The id a mask file is matched by (the rule in the module docstring)."""
    stem = _stem(Path(path).name)
    if stem.startswith("sub-"):
        return stem.split("_", 1)[0]
    for suffix in PRODUCER_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def nifti_files(folder: Path) -> list[Path]:
    """Every ``.nii``/``.nii.gz`` file under ``folder`` (recursively, hidden files and folders
    skipped), sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and is_nifti(f)]
    return sorted(found)


def reference_masks(files: list[Path]) -> list[Path]:
    """The files of a reference folder that are masks: images (``_T1w``, ``_T2w``, ``_FLAIR``,
    ``_dwi``, ``_adc``; nnU-Net channel images, i.e. ``<case>_0000`` … ``<case>_9999`` beside a file
    ``<case>`` or in a folder ``images…``) left out."""
    stems = {_stem(p.name) for p in files}
    masks = []
    for path in files:
        stem = _stem(path.name)
        if stem.lower().endswith(NOT_MASK_SUFFIXES):
            continue
        if CHANNEL_SUFFIX.search(stem) and (CHANNEL_SUFFIX.sub("", stem) in stems
                                            or path.parent.name.lower().startswith("images")):
            continue
        masks.append(path)
    return masks


def cases(folder: Path, what: str, reference: bool = False) -> dict[str, Path]:
    """Case id -> mask file of one folder; an id given by two files is an error naming both."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, f"{what} folder not found")
    if not folder.is_dir():
        raise InputError(folder, f"{what} is not a folder")
    files = nifti_files(folder)
    if reference:
        files = reference_masks(files)
    if not files:
        raise InputError(folder, f"no {'mask ' if reference else ''}.nii/.nii.gz files in the {what} folder "
                                 "(searched recursively)")
    found: dict[str, Path] = {}
    for path in files:
        case = case_id(path)
        if case in found:
            raise InputError(path, f"same case id {case!r} as {found[case]} (one file per case and folder)")
        found[case] = path
    return dict(sorted(found.items()))


def match(predictions: dict[str, Path], references: dict[str, Path], folder: Path) -> None:
    """Every reference case needs a prediction and every prediction a reference."""
    missing = [c for c in references if c not in predictions]
    extra = [c for c in predictions if c not in references]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(references[missing[0]], f"no prediction for case {missing[0]!r} in {folder}{more}")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise InputError(predictions[extra[0]], f"no reference mask for case {extra[0]!r}{more}")


def mask_labels(folders: list[Path]) -> list[str]:
    """The ``mask`` column's name of each predictions folder: its folder name, with as many parent
    folders as make the names distinct (``runA/masks``, ``runB/masks``)."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]).lstrip("/") or "/" for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    first = parts[0][-1] if parts[0] else "/"
    return [first if i == 0 else f"{first}_{i + 1}" for i in range(len(folders))]   # one folder twice


# --------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Volume:
    mask: np.ndarray          # uint8 {0, 1}
    affine: np.ndarray        # 4x4 float64
    zooms: tuple[float, ...]  # header voxel size (mm)


def load(path: Path) -> Volume:
    """A binary mask (:func:`strokeseg.data.nifti.load_mask`: any fault names the file) and its grid,
    from one read of the file."""
    mask, image = load_mask_image(path, binarize=False, allow_empty=True)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Volume(mask, np.asarray(image.affine, dtype=np.float64), zooms)


def _grid(volume: Volume) -> str:
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    return (f"{'x'.join(str(s) for s in volume.mask.shape)}, {'x'.join(f'{z:g}' for z in spacing)} mm, "
            f"{''.join(nib.aff2axcodes(volume.affine))}, origin {','.join(f'{o:g}' for o in volume.affine[:3, 3])}")


def on_reference_grid(path: Path, volume: Volume, reference_path: Path, reference: Volume,
                      resample: bool, case: str) -> np.ndarray:
    """The prediction's mask on the reference grid: as is when shape and affine agree, else an error
    or, with ``resample``, nearest neighbour through world coordinates."""
    fault = None
    if volume.mask.shape != reference.mask.shape:
        fault = f"shape {volume.mask.shape} differs from the reference's {reference.mask.shape} ({reference_path})"
    elif not same_affine(volume.affine, reference.affine):
        difference = float(np.max(np.abs(volume.affine - reference.affine)))
        fault = f"affine differs from the reference's (max difference {difference:.4g}; {reference_path})"
    if fault is None:
        return volume.mask
    if not resample:
        raise InputError(path, f"{fault}; --resample resamples it onto the reference grid (nearest neighbour)")
    log.info("%s: %s is on grid %s, not the reference's %s: resampled onto the reference grid (nearest "
             "neighbour, world coordinates)", case, path, _grid(volume), _grid(reference))
    return to_grid(volume.mask, volume.affine, reference.mask.shape, reference.affine, order=0).astype(np.uint8)


def nnunet_dice(metrics: dict) -> float:
    """nnU-Net's Dice: the same ``2TP / (|P| + |G|)``, but NaN (left out) when both masks are empty."""
    return float("nan") if metrics["pred_voxels"] == 0 and metrics["truth_voxels"] == 0 else float(metrics["dice"])


def score(pred: np.ndarray, truth: np.ndarray, spacing) -> dict:
    """Stage 10's per-subject metrics (6-connectivity) plus :func:`nnunet_dice`."""
    metrics = subject_metrics(pred, truth, spacing, connectivity=CONNECTIVITY)
    return {**metrics, DICE_NNUNET: nnunet_dice(metrics)}


def _spacing(path: Path, volume: Volume) -> tuple[float, ...]:
    if not all(np.isfinite(z) and z > 0 for z in volume.zooms):
        raise InputError(path, f"voxel size {volume.zooms} in the header is not positive")
    return volume.zooms


def score_folders(predictions: dict[str, dict[str, Path]], references: dict[str, Path], resample: bool,
                  progress: bool) -> tuple[list[dict], dict[str, int]]:
    """Rows ``{subject_name, mask, <metrics>}`` (per case, the folders in order) and each case's volume
    bin (reference lesion voxels, :data:`strokeseg.config.VOLUME_BIN_EDGES`)."""
    from tqdm import tqdm

    rows, bins = [], {}
    for case, reference_path in tqdm(references.items(), desc="evaluate", unit="case", disable=not progress,
                                     leave=False):
        truth = load(reference_path)
        spacing = _spacing(reference_path, truth)
        bins[case] = int(assign_bins([int(np.count_nonzero(truth.mask))], VOLUME_BIN_EDGES)[0])
        for label, files in predictions.items():
            pred = on_reference_grid(files[case], load(files[case]), reference_path, truth, resample, case)
            rows.append({"subject_name": case, "mask": label, **score(pred, truth.mask, spacing)})
    return rows, bins


def tables(rows: list[dict], bins: dict[str, int], labels: list[str]) -> dict:
    """File name -> table: subjects.csv, summary.csv, by_volume_bin.csv and, with two folders,
    paired_comparison.csv (the first folder against the second)."""
    from strokeseg.evaluate import subject_tables as st

    subjects = st.subjects_frame(rows, bins, VOLUME_BIN_EDGES, metrics=SUBJECT_METRICS)
    out = {SUBJECTS_CSV: subjects,
           SUMMARY_CSV: st.summary(subjects, labels, metrics=with_nnunet_dice(st.SUMMARY_METRICS)),
           BY_VOLUME_BIN_CSV: st.by_volume_bin(subjects, VOLUME_BIN_EDGES, labels,
                                               metrics=with_nnunet_dice(st.BIN_METRICS))}
    if len(labels) == 2:
        better = {k: st.BETTER["dice" if k == DICE_NNUNET else k] for k in with_nnunet_dice(st.BETTER)}
        # paired_comparison's reference is the first folder: its differences are first - second.
        paired = st.paired_comparison(subjects, labels[0], labels, metrics=better)
        paired = paired.rename(columns={"mask": "against", "mask_mean": "against_mean", "reference_mean": "mask_mean"})
        paired.insert(0, "mask", labels[0])
        out[PAIRED_COMPARISON_CSV] = paired[["mask", "against", "metric", "better", "n_pairs", "mask_mean",
                                             "against_mean", "mean_difference", "median_difference", "statistic",
                                             "p_value", "method"]]
    return out


# ---------------------------------------------------------------------------------------- runs
def evaluate(pred_dir, reference, output, against=None, resample: bool = False, progress: bool = True) -> dict:
    """Score, then write every table into ``output``; returns them by file name. Any fault raises
    :class:`InputError` before anything is written."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(output, "output exists and is not a folder")
    references = cases(reference, "reference", reference=True)
    folders = [Path(pred_dir)] + ([Path(against)] if against is not None else [])
    found = [cases(folder, "predictions" if i == 0 else "--against") for i, folder in enumerate(folders)]
    for folder, files in zip(folders, found):
        match(files, references, folder)
    labels = mask_labels(folders)
    log.info("%d case(s) of %s matched in %s", len(references), reference, ", ".join(map(str, folders)))
    rows, bins = score_folders(dict(zip(labels, found)), references, resample, progress)
    result = tables(rows, bins, labels)

    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(output, f"cannot create the output folder ({exc.__class__.__name__}: {exc})") from None
    for name, table in result.items():
        write_csv(table, output / name)
    stale = output / PAIRED_COMPARISON_CSV
    if PAIRED_COMPARISON_CSV not in result and stale.is_file():
        stale.unlink()
        log.info("removed %s of an earlier run (no --against)", stale)
    summary = result[SUMMARY_CSV].set_index("mask")
    for label in labels:
        log.info("%s: %d case(s), Dice %.4f (ATLAS) / %.4f (nnU-Net)", label, len(references),
                 summary.loc[label, "dice_mean"], summary.loc[label, f"{DICE_NNUNET}_mean"])
    log.info("tables in %s", output)
    return result


# ------------------------------------------------------------------------------- command line
HELP = "score a folder of predicted lesion masks against reference masks (stage 10's 3-D metrics and tables)"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``strokeseg evaluate`` options; the help's epilog is this module's documentation."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (__doc__ or "\n\n\n\n").split("\n\n", 2)[2]
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR",
                        help="folder of predicted masks (.nii/.nii.gz, searched recursively)")
    parser.add_argument("--reference", type=Path, required=True, metavar="REF_DIR",
                        help="folder of reference masks (an ATLAS tree or nnU-Net dataset folder works as is)")
    parser.add_argument("--against", type=Path, default=None, metavar="OTHER_DIR",
                        help="a second predictions folder: scored too, and PRED_DIR is compared with it "
                             f"case by case ({PAIRED_COMPARISON_CSV}, paired Wilcoxon per metric)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help=f"folder for {SUBJECTS_CSV}, {SUMMARY_CSV}, {BY_VOLUME_BIN_CSV} (and "
                             f"{PAIRED_COMPARISON_CSV}); created if missing, its tables replaced")
    parser.add_argument("--resample", action="store_true",
                        help="resample a prediction whose shape or affine differs from its reference onto "
                             "the reference grid (nearest neighbour, world coordinates) instead of failing")
    if "--quiet" not in parser._option_string_actions:  # the strokeseg CLI may add its own
        parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 with one line ``error: <file>: <fault>`` on stderr (nothing written)."""
    try:
        evaluate(args.pred_dir, args.reference, args.output, against=args.against, resample=args.resample,
                 progress=not args.quiet)
    except StrokesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m strokeseg.evaluate.external ...`` (the same as ``strokeseg evaluate ...``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="strokeseg evaluate", description=HELP))
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())

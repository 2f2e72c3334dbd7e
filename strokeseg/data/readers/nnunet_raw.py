"""nnU-Net v2 raw datasets: ``DatasetNNN_Name/`` with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.

Layout (nnU-Net v2's ``nnUNet_raw`` format)::

    dataset.json                 channel_names {"0": "DWI", "1": "ADC"} (legacy: modality),
                                 labels {"background": 0, "lesion": 1, ...}, numTraining,
                                 file_ending (default ".nii.gz")
    imagesTr/<case>_0000.nii.gz  channel 0 of each training case, _0001 channel 1, ...
    labelsTr/<case>.nii.gz       the label map of each training case
    imagesTs/                    unlabelled test images: ignored (stage 01 needs labelled subjects)

Rules:

- Channel names are dataset.json's, lower-cased, every run of characters other than letters and
  digits made one ``_`` ("T2-FLAIR" -> ``t2_flair``), prefixed with ``ch_`` when they do not then
  start with a letter; two channels with one name are an error. Kinds: ``ct`` for a channel named
  CT (nnU-Net's CT normalisation, any case), ``t1`` for T1/T1w, ``mr`` otherwise.
  ``options.channels`` chooses channels by these names, in the given order; default: all, in
  dataset.json's order.
- ``options.label`` (default 1) is the lesion label; it must be one of dataset.json's label values
  (background 0 excluded). When the dataset has more than background and one label, or the lesion
  label is not 1, the cohort gets :func:`materialise` (bound to the label), which writes
  ``<case>_mask.nii.gz`` = (label map == lesion label), uint8, with the label file's header;
  otherwise the label files are the masks.
- Only ``.nii.gz`` and ``.nii`` file endings are read.
- A case is a file ``imagesTr/<case>_<4 digits><ending>``; every case needs every channel file and
  its label file, every label file needs images, and dataset.json's numTraining (when given) must
  equal the number of cases. Subject id and group = the case id; site = "". Lesion-free cases are
  part of nnU-Net datasets, so the cohort allows empty masks.

Faults are one-line :class:`~strokeseg.errors.InputError` naming the file (dataset.json, the
missing or stray file, an image or label entry that is not a regular file: a folder, a FIFO).
Only file names and dataset.json are read here, never voxels.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from strokeseg.data.input_files import irregularity, require_regular
from strokeseg.data.nifti import load_image, write_nifti
from strokeseg.data.subjects import VOLUME_PLANES, Cohort, Subject
from strokeseg.errors import InputError

log = logging.getLogger(__name__)

KIND = "nnunet"
DATASET_JSON = "dataset.json"
IMAGES_TR, LABELS_TR, IMAGES_TS = "imagesTr", "labelsTr", "imagesTs"
DEFAULT_ENDING = ".nii.gz"
ENDINGS = (".nii.gz", ".nii")
BACKGROUND = 0
MASK_OUT = "_mask.nii.gz"                 # materialised mask: <case>_mask.nii.gz
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
_NOT_NAME = re.compile(r"[^a-z0-9]+")


# ----------------------------------------------------------------------------------- dataset.json

def _dataset_json(root: Path) -> dict:
    path = root / DATASET_JSON
    if irregularity(path) == "not found":
        raise InputError(path, "dataset.json not found (nnU-Net v2 raw dataset: dataset.json, imagesTr/, labelsTr/)")
    require_regular(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "not a JSON object")
    return meta


def channel_name(raw: str) -> str:
    """dataset.json's channel name made a lower-case identifier: ``"T2-FLAIR"`` -> ``"t2_flair"``."""
    name = _NOT_NAME.sub("_", str(raw).lower()).strip("_")
    return name if name[:1].isalpha() else f"ch_{name}".rstrip("_")


def channel_kind(name: str) -> str:
    """``ct`` (nnU-Net normalises a channel named CT as Hounsfield units), ``t1``, else ``mr``."""
    if name == "ct":
        return "ct"
    return "t1" if name in ("t1", "t1w") else "mr"


def _channel_names(meta: dict, path: Path) -> tuple[str, ...]:
    """Channel names by index (0, 1, ...), from ``channel_names`` or the legacy ``modality``."""
    raw = meta.get("channel_names")
    if raw is None:
        raw = meta.get("modality")              # nnU-Net v1's key, still read by v2
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, 'no channel_names (e.g. {"0": "DWI", "1": "ADC"}) or legacy modality')
    if sorted(raw) != [str(i) for i in range(len(raw))]:
        raise InputError(path, f"channel_names keys must be 0..{len(raw) - 1}, got {', '.join(sorted(raw))}")
    names = tuple(channel_name(raw[str(i)]) for i in range(len(raw)))
    for i, name in enumerate(names):
        if name in names[:i]:
            first = names.index(name)
            raise InputError(path, f"channels {first} ({raw[str(first)]!r}) and {i} ({raw[str(i)]!r}) "
                                   f"both become channel name {name!r}")
    return names


def _labels(meta: dict, path: Path) -> dict[str, int]:
    """Integer labels other than background (region-based lists are not lesion labels)."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, 'no labels (e.g. {"background": 0, "lesion": 1})')
    return {name: value for name, value in raw.items()
            if isinstance(value, int) and not isinstance(value, bool) and value != BACKGROUND}


def _lesion_label(options, labels: dict[str, int], path: Path) -> int:
    label = options.label
    if label not in labels.values():
        listed = ", ".join(f"{name}={value}" for name, value in labels.items()) or "none but background"
        raise InputError(path, f"lesion label {label} is not one of the labels ({listed}); choose one with --label")
    return label


def _file_ending(meta: dict, path: Path) -> str:
    ending = meta.get("file_ending", DEFAULT_ENDING)
    if ending not in ENDINGS:
        raise InputError(path, f"file_ending {ending!r} is not supported (supported: {', '.join(ENDINGS)})")
    return ending


def _num_training(meta: dict, path: Path) -> int | None:
    value = meta.get("numTraining")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InputError(path, f"numTraining must be a whole number, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------- cases

def _files(folder: Path, ending: str, regular: bool = True) -> list[Path]:
    """Entries of ``folder`` named with ``ending`` (other files, e.g. .DS_Store, are not nnU-Net's); with
    ``regular``, each must be a regular file (a FIFO or folder named like an image is an error)."""
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    try:
        found = sorted(p for p in folder.iterdir() if p.name.endswith(ending))
    except OSError as exc:
        raise InputError(folder, f"cannot read folder ({exc.__class__.__name__}: {exc.strerror or exc})") from None
    return [require_regular(p) for p in found] if regular else found


def _image_cases(images: Path, ending: str, n_channels: int) -> dict[str, dict[int, Path]]:
    """case -> {channel index: file} from ``imagesTr/<case>_<NNNN><ending>``."""
    cases: dict[str, dict[int, Path]] = {}
    for path in _files(images, ending):
        found = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if not found:
            raise InputError(path, f"not named <case>_<4-digit channel>{ending} (nnU-Net image file)")
        index = int(found["index"])
        if index >= n_channels:
            raise InputError(path, f"channel index {index} beyond the {n_channels} channels of {DATASET_JSON}")
        cases.setdefault(found["case"], {})[index] = path
    return cases


def _check_cases(images: Path, labels_dir: Path, cases: dict[str, dict[int, Path]],
                 labels: dict[str, Path], n_channels: int, ending: str) -> None:
    for case, files in sorted(cases.items()):
        for index in range(n_channels):
            if index not in files:
                raise InputError(images / f"{case}_{index:04d}{ending}",
                                 f"channel file not found (case {case} has other channels)")
        if case not in labels:
            raise InputError(labels_dir / f"{case}{ending}", f"label file not found for case {case}")
    for case, path in sorted(labels.items()):
        if case not in cases:
            raise InputError(path, f"label file without images in {IMAGES_TR}/ (expected {case}_0000{ending})")


def _chosen(options, names: tuple[str, ...], path: Path) -> tuple[int, ...]:
    """Indices of the chosen channels, in the chosen order (default: all)."""
    if options.channels is None:
        return tuple(range(len(names)))
    chosen = tuple(c.lower() for c in options.channels)
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise InputError(path, f"--channels {','.join(options.channels)} must name distinct channels "
                               f"among {', '.join(names)}")
    return tuple(names.index(c) for c in chosen)


def matches(root: Path) -> bool:
    try:
        return (Path(root) / DATASET_JSON).is_file() and (Path(root) / IMAGES_TR).is_dir()
    except OSError:  # an unreadable folder is not this layout
        return False


def read(root: Path, options) -> Cohort:
    root = Path(root)
    meta = _dataset_json(root)
    path = root / DATASET_JSON
    names = _channel_names(meta, path)
    labels = _labels(meta, path)
    label = _lesion_label(options, labels, path)
    ending = _file_ending(meta, path)
    expected = _num_training(meta, path)
    chosen = _chosen(options, names, path)

    images, labels_dir = root / IMAGES_TR, root / LABELS_TR
    cases = _image_cases(images, ending, len(names))
    label_files = {p.name[: -len(ending)]: p for p in _files(labels_dir, ending)}
    _check_cases(images, labels_dir, cases, label_files, len(names), ending)
    if not cases:
        raise InputError(images, f"no training cases (no <case>_0000{ending} files)")
    if expected is not None and expected != len(cases):
        raise InputError(path, f"numTraining is {expected} but {IMAGES_TR}/ and {LABELS_TR}/ hold {len(cases)} cases")

    notes = []
    if (root / IMAGES_TS).is_dir():
        # nnU-Net's test images have no labels; the study needs a lesion mask for every subject
        n_test = len(_files(root / IMAGES_TS, ending, regular=False))
        notes.append(f"{IMAGES_TS}/ ignored ({n_test} files): unlabelled test images, the study needs labelled cases")
        log.info("%s: %s", root / IMAGES_TS, notes[-1])
    multi_label = len(labels) > 1 or label != 1
    if multi_label:
        notes.append(f"lesion mask = label {label} of {len(labels)} labels (written as <case>{MASK_OUT})")

    subjects = tuple(Subject(case, case, "", tuple((names[i], cases[case][i]) for i in chosen), label_files[case])
                     for case in sorted(cases))
    channels = tuple(names[i] for i in chosen)
    return Cohort(KIND, root, channels, tuple(channel_kind(c) for c in channels), subjects, VOLUME_PLANES,
                  allow_empty_masks=True,
                  # functools.partial of a module-level function pickles: worker processes can call it
                  materialise=functools.partial(materialise, label=label) if multi_label else None,
                  notes=tuple(notes))


# --------------------------------------------------------------------------------- materialise

def materialise(subject: Subject, folder: Path, label: int = 1) -> Subject:
    """Write ``folder/<case>_mask.nii.gz`` = (``subject.mask`` == ``label``), uint8, the label file's header.

    Returns the subject pointing at that mask; the channels are unchanged.
    """
    source = Path(subject.mask)
    img = load_image(source, "label")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(source, f"{data.ndim}-D label map (shape {tuple(data.shape)}), expected 3-D")
    if data.dtype.kind not in "buif":
        raise InputError(source, f"unsupported label data type {data.dtype}, expected numbers")
    out = Path(folder) / f"{subject.subject}{MASK_OUT}"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(out, data == label, reference=img, dtype=np.uint8)
    return replace(subject, mask=out)

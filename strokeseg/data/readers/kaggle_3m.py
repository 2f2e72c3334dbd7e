"""Kaggle LGG ``kaggle_3m`` (TCGA lower-grade glioma): RGB TIFF slices with TIFF masks per patient.

Layout (``root`` is the folder that holds the patient folders, or its parent when that parent has
exactly one such folder, e.g. the download folder around ``kaggle_3m/``)::

    <patient>/<patient>_<n>.tif          # slice n: RGB uint8 = (pre-contrast, FLAIR, post-contrast)
    <patient>/<patient>_<n>_mask.tif     # its lesion mask

Rules (the shared ones are :mod:`~strokeseg.data.readers.slice_folders`'s: numeric slice order,
no gaps or doubled numbers, one mask per image, the mask binarisation rule, the volume axes and
the spacing):

* A patient folder is a folder that holds ``.tif``/``.tiff`` files; every such file in it must be
  named ``<patient>_<n>.tif`` or ``<patient>_<n>_mask.tif`` with ``<patient>`` the folder's name
  (anything else is an error naming the file). Other files (``data.csv``, ``README.md``) are ignored.
* Three channels, in this order: ``pre_contrast``, ``flair``, ``post_contrast`` (kind ``mr``), the
  dataset's R, G and B. OpenCV decodes colour as BGR, so the channels are taken after a BGR->RGB
  conversion. ``--channels`` may choose a subset or another order of these names.
* Patient id = the folder name (``TCGA_CS_4941_19960909``); group = the id without its trailing
  ``_<date>`` (``TCGA_CS_4941``: the patient, whatever the session); site = the TCGA institution
  code (``CS``), or "" for ids that are not ``TCGA_<site>_...``.
* Lesion-free patients and slices are part of the dataset (``allow_empty_masks``); only the axial
  plane is meaningful (``SLICE_PLANES``).

Before materialising, every channel of a subject and its mask point at the patient folder.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from strokeseg.data.input_files import require_regular
from strokeseg.data.readers import slice_folders as sf
from strokeseg.data.subjects import SLICE_PLANES, Cohort, Subject
from strokeseg.errors import InputError

KIND = "kaggle_3m"
CHANNELS = ("pre_contrast", "flair", "post_contrast")   # the dataset's R, G, B
CHANNEL_KIND = "mr"
MASK_TAG = "_mask"

_SLICE_NAME = re.compile(r"(?P<number>[0-9]+)(?P<mask>_mask)?\.tiff?", re.IGNORECASE)
_ANY_MASK_NAME = re.compile(r".+_[0-9]+_mask\.tiff?", re.IGNORECASE)
_DATE_SUFFIX = re.compile(r"(?P<patient>.+)_[0-9]{8}")
_TCGA_ID = re.compile(r"TCGA_(?P<site>[A-Za-z0-9]+)_.+")


def _is_tif(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _holds_masks(folder: Path) -> bool:
    return any(_ANY_MASK_NAME.fullmatch(f.name) for f in folder.iterdir())


def matches(root: Path) -> bool:
    """A folder one or two levels below ``root`` holds ``*_<n>_mask.tif`` files."""
    root = Path(root)
    for child in sf.visible_folders(root):
        if _holds_masks(child) or any(_holds_masks(grandchild) for grandchild in sf.visible_folders(child)):
            return True
    return False


def group_of(patient: str) -> str:
    """The patient without the trailing ``_<yyyymmdd>`` of the acquisition date."""
    found = _DATE_SUFFIX.fullmatch(patient)
    return found["patient"] if found else patient


def site_of(patient: str) -> str:
    """The TCGA institution code (``TCGA_CS_4941_19960909`` -> ``CS``), or "" for other ids."""
    found = _TCGA_ID.fullmatch(patient)
    return found["site"] if found else ""


def patient_slices(folder: Path) -> tuple[sf.SlicePair, ...]:
    """One patient's slices in numeric order; names, numbers and pairs checked, no pixel read."""
    patient = folder.name
    images, masks = [], []
    for path in sf.visible_entries(folder):
        if not _is_tif(path):
            continue
        require_regular(path)
        rest = path.name[len(patient) + 1:] if path.name.startswith(f"{patient}_") else ""
        found = _SLICE_NAME.fullmatch(rest)
        if found is None:
            raise InputError(path, f"not a slice name of patient {patient} "
                                   f"(expected {patient}_<n>.tif or {patient}_<n>_mask.tif)")
        (masks if found["mask"] else images).append((int(found["number"]), path))
    return sf.pair_slices(sf.number_files(folder, images), sf.number_files(folder, masks), folder,
                          mask_for=lambda image: image.with_name(f"{image.stem}{MASK_TAG}{image.suffix}"),
                          image_for=lambda mask: mask.with_name(f"{mask.stem[:-len(MASK_TAG)]}{mask.suffix}"))


def subject_slices(subject: Subject) -> tuple[sf.SlicePair, ...]:
    """:func:`patient_slices` of a not yet materialised subject (its mask path is the patient folder)."""
    return patient_slices(subject.mask)


def read_channels(path: Path, names: Sequence[str]) -> Mapping[str, np.ndarray]:
    """``{channel: (H, W) uint8}`` from one RGB slice, for the channel names asked."""
    pixels = sf.require_uint8(sf.read_pixels(path), path)
    if pixels.ndim != 3:
        raise InputError(path, "grayscale image, expected RGB (pre-contrast, FLAIR, post-contrast)")
    rgb = cv2.cvtColor(sf.opaque_colour(pixels, path), cv2.COLOR_BGR2RGB)   # OpenCV decodes as BGR
    return {name: rgb[..., CHANNELS.index(name)] for name in names}


def _has_tifs(folder: Path) -> bool:
    """Whether ``folder`` holds entries named ``*.tif``/``*.tiff`` (of any kind: a patient folder of FIFOs or
    folders named like slices is read, and its entries are errors, rather than skipped)."""
    return any(_is_tif(f) and not f.name.startswith(".") for f in folder.iterdir())


def patients_folder(root: Path) -> Path:
    """The folder that holds the patient folders: ``root``, or its only child that does."""
    if any(_has_tifs(child) for child in sf.visible_folders(root)):
        return root
    holders = [child for child in sf.visible_folders(root)
               if any(_has_tifs(grandchild) for grandchild in sf.visible_folders(child))]
    if len(holders) > 1:
        names = ", ".join(h.name for h in holders)
        raise InputError(root, f"several folders hold patient folders ({names}); give the one to read")
    if not holders:
        raise InputError(root, "no patient folders (expected <patient>/<patient>_<n>.tif and "
                               "<patient>/<patient>_<n>_mask.tif, here or one folder down)")
    return holders[0]


def _channels(root: Path, chosen: Sequence[str] | None) -> tuple[str, ...]:
    if chosen is None:
        return CHANNELS
    unknown = [c for c in chosen if c not in CHANNELS]
    if unknown or len(set(chosen)) != len(chosen) or not chosen:
        raise InputError(root, f"--channels {','.join(chosen)}: choose distinct names among {', '.join(CHANNELS)}")
    return tuple(chosen)


def read(root: Path, options) -> Cohort:
    """The patients under ``root``: names and slice numbers checked, no pixel read."""
    root = Path(root)
    channels = _channels(root, options.channels)
    spacing = sf.checked_spacing(options.spacing)
    holder = patients_folder(root)
    subjects = []
    for folder in sf.visible_folders(holder):
        if not _has_tifs(folder):
            continue
        patient_slices(folder)                  # the name checks, now rather than while materialising
        patient = folder.name
        subjects.append(Subject(patient, group_of(patient), site_of(patient),
                                tuple((name, folder) for name in channels), folder))
    notes = [sf.AXES_NOTE, *sf.spacing_notes(spacing),
             "channels from the RGB slices: R = pre_contrast, G = flair, B = post_contrast"]
    if holder != root:
        notes.append(f"patient folders read from {holder.name}/")
    return Cohort(KIND, root, channels, (CHANNEL_KIND,) * len(channels), tuple(sorted(subjects)),
                  SLICE_PLANES, spacing_known=spacing is not None, allow_empty_masks=True,
                  materialise=materialiser(spacing), notes=tuple(notes))


def materialiser(spacing: tuple[float, float, float] | None) -> sf.Materialiser:
    """The cohort's ``materialise``: this module's slice listing and RGB reading, with ``spacing``."""
    return sf.Materialiser(subject_slices, read_channels, spacing)

"""CT slice folders (the LCNN project's layout): 8-bit grayscale PNG slices and PNG masks per patient.

Layout (``root`` is the folder that holds ``images/`` and ``masks/``)::

    images/<patient>/<n>.png     # 8-bit grayscale slice n of the patient
    masks/<patient>/<n>.png      # its lesion mask: the same file name in the masks tree

Rules (the shared ones are :mod:`~strokeseg.data.readers.slice_folders`'s: numeric slice order,
no gaps or doubled numbers, one mask per image, the mask binarisation rule, the volume axes and
the spacing):

* ``<n>`` is the whole file stem, digits only (``7.png``, ``007.png``); any other ``*.png`` name is
  an error naming the file, since its place in the stack would be a guess. Other files are ignored.
* A patient is a folder under ``images/``; it must have a folder of the same name under
  ``masks/`` and the other way round. Patient id = group = the folder name; no site.
* One channel, ``ct``, of kind ``image8``: the PNGs are display images already on the 0..255 scale
  (the window was applied when they were exported), not Hounsfield units. A 3-channel PNG whose
  channels are equal counts as grayscale; a colour PNG or a 16-bit PNG is an error (checked when
  materialising).
* Lesion-free patients are part of such data (``allow_empty_masks``); only the axial plane is
  meaningful (``SLICE_PLANES``).

Before materialising, a subject's ``ct`` channel points at ``images/<patient>/`` and its mask at
``masks/<patient>/``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from strokeseg.data.input_files import require_regular
from strokeseg.data.readers import slice_folders as sf
from strokeseg.data.subjects import SLICE_PLANES, Cohort, Subject
from strokeseg.errors import InputError

KIND = "png_slices"
CHANNEL = "ct"
CHANNEL_KIND = "image8"
IMAGES = "images"
MASKS = "masks"
SUFFIX = ".png"


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == SUFFIX


def matches(root: Path) -> bool:
    """``images/`` and ``masks/`` folders, and at least one PNG in a patient folder of ``images/``."""
    root = Path(root)
    if not (root / IMAGES).is_dir() or not (root / MASKS).is_dir():
        return False
    return any(_is_png(f) for patient in sf.visible_folders(root / IMAGES) for f in patient.iterdir())


def _numbered_pngs(folder: Path) -> dict[int, Path]:
    """``{n: folder/<n>.png}``; a PNG whose stem is not a number is an error."""
    numbered = []
    for path in sf.visible_entries(folder):
        if not _is_png(path):
            continue
        require_regular(path)
        if not path.stem.isdigit() or not path.stem.isascii():
            raise InputError(path, "slice file name is not a number (expected <n>.png, e.g. 12.png)")
        numbered.append((int(path.stem), path))
    return sf.number_files(folder, numbered)


def patient_slices(images: Path, masks: Path) -> tuple[sf.SlicePair, ...]:
    """One patient's slices in numeric order, from its image folder and its mask folder."""
    return sf.pair_slices(_numbered_pngs(images), _numbered_pngs(masks), images,
                          mask_for=lambda image: masks / image.name,
                          image_for=lambda mask: images / mask.name)


def subject_slices(subject: Subject) -> tuple[sf.SlicePair, ...]:
    """:func:`patient_slices` of a not yet materialised subject (channel = image folder, mask = mask folder)."""
    return patient_slices(subject.channel(CHANNEL), subject.mask)


def read_channels(path: Path, names: Sequence[str]) -> Mapping[str, np.ndarray]:
    """``{"ct": (H, W) uint8}`` from one PNG: 8-bit grayscale, or colour with equal channels."""
    image = sf.grayscale(sf.require_uint8(sf.read_pixels(path), path), path)
    return {name: image for name in names}


def _patient_folders(root: Path) -> list[str]:
    """Patient names under ``images/``, each with its folder under ``masks/``."""
    for part in (IMAGES, MASKS):
        if not (root / part).is_dir():
            raise InputError(root / part, f"folder not found (the {KIND} layout is images/<patient>/<n>.png "
                                          "and masks/<patient>/<n>.png)")
    images = [p.name for p in sf.visible_folders(root / IMAGES)]
    masks = {p.name for p in sf.visible_folders(root / MASKS)}
    for name in images:
        if name not in masks:
            raise InputError(root / MASKS / name, f"mask folder not found for patient {name}")
    orphans = sorted(masks - set(images))
    if orphans:
        raise InputError(root / IMAGES / orphans[0], f"image folder not found for patient {orphans[0]} (masks only)")
    if not images:
        raise InputError(root / IMAGES, "no patient folders (expected images/<patient>/<n>.png)")
    return images


def read(root: Path, options) -> Cohort:
    """The patients under ``root``: names and slice numbers checked, no pixel read."""
    root = Path(root)
    if options.channels not in (None, (CHANNEL,)):
        raise InputError(root, f"{KIND} has one channel, {CHANNEL}; got --channels {','.join(options.channels)}")
    spacing = sf.checked_spacing(options.spacing)
    subjects = []
    for name in _patient_folders(root):
        images, masks = root / IMAGES / name, root / MASKS / name
        patient_slices(images, masks)           # the name checks, now rather than while materialising
        subjects.append(Subject(name, name, "", ((CHANNEL, images),), masks))
    return Cohort(KIND, root, (CHANNEL,), (CHANNEL_KIND,), tuple(sorted(subjects)), SLICE_PLANES,
                  spacing_known=spacing is not None, allow_empty_masks=True,
                  materialise=materialiser(spacing),
                  notes=(sf.AXES_NOTE, *sf.spacing_notes(spacing)))


def materialiser(spacing: tuple[float, float, float] | None) -> sf.Materialiser:
    """The cohort's ``materialise``: this module's slice listing and PNG reading, with ``spacing``."""
    return sf.Materialiser(subject_slices, read_channels, spacing)

"""What the slice-folder readers share: numbered 2-D slices per patient, stacked into NIfTI volumes.

Two layouts keep one patient as a folder of 2-D image files plus one mask file per image
(:mod:`~strokeseg.data.readers.png_slices`, :mod:`~strokeseg.data.readers.kaggle_3m`). This module
holds the rules they have in common, so the two readers cannot drift apart:

**Slice order.** Each file name carries a slice number ``<n>``. The slices are stacked in numeric
order of ``<n>`` (1, 2, ..., 9, 10, never the string order 1, 10, 2), so unpadded names work. The
numbers of one patient must be a consecutive run (1..N, 0..N-1 or any other run without gaps): a
gap, or one number written twice (``01.png`` and ``1.png``), is an
:class:`~strokeseg.errors.InputError` naming the patient folder and the numbers, since either means
a lost or doubled slice that would silently shift the volume.

**Pairs.** Every image has exactly one mask with the same number and every mask an image; a
missing partner is an error naming the file that is missing (the expected path). A slice or mask
name that belongs to a folder, a FIFO or anything else but a regular file is an error naming it
(never opened), not a slice left out.

**Mask binarisation.** A mask pixel is lesion when its value is greater than half of the file's
scale, where the scale is 1 when the mask's maximum is <= 1, and otherwise the largest value of its
data type (255 for 8-bit, 65535 for 16-bit). So 0/1 and 0/255 masks both work, and anti-aliased or
JPEG-like edge values are thresholded at half (128..255 is lesion in an 8-bit 0/255 mask). The
scale is chosen per file, because one file's maximum is all it says about its own convention. A
three-channel mask whose channels are equal counts as grayscale.

**Volume axes.** A patient's N slices of H rows by W columns become volumes of shape (W, H, N):
``volume[:, :, k]`` is slice k (the k-th in numeric order) transposed, i.e. ``volume[x, y, z]`` is
the pixel at column x, row y of slice z. This puts the slices on the NIfTI x/y/z voxel axes the
rest of the package uses (:mod:`strokeseg.data.planes`: axial slices are ``vol[:, :, k]``), with x
along the image columns and y along the rows.

**Spacing and units.** The files carry no voxel size. The affine is ``diag(sx, sy, sz, 1)``
with ``(sx, sy, sz)`` = ``--spacing`` in mm (x = column, y = row, z = slice step) when given, and
``diag(1, 1, 1, 1)`` otherwise. The NIfTI ``xyzt_units`` say ``mm`` when the spacing was given and
``unknown`` (0) when not, so the file itself records whether its voxel size is physical; the
cohort's ``spacing_known`` says the same. The affine is a plain scaling: the layouts do not record
the patient's orientation, so none is claimed.

**Reading is cheap, materialising reads pixels.** A reader's ``read`` only lists folders and
checks file names (numbers, gaps, duplicates, pairs); image sizes, pixel types and grayscale are
checked by :class:`Materialiser` while it stacks the slices (its errors name the file). Before
materialising, a :class:`~strokeseg.data.subjects.Subject` of a slice-folder cohort has channel and
mask paths that point at folders (each reader documents which); after it, at the NIfTI files
``<subject>_<channel>.nii.gz`` (uint8) and ``<subject>_mask.nii.gz`` (uint8 {0, 1}).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from strokeseg.data.input_files import require_regular
from strokeseg.data.nifti import write_nifti
from strokeseg.data.subjects import Subject
from strokeseg.errors import ConfigError, InputError

_MAX_LISTED = 5
UNIT_SPACING = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SlicePair:
    """One slice of a patient: its number in the file names, its image file and its mask file."""

    number: int
    image: Path
    mask: Path


# --- names and order ------------------------------------------------------------------------------

def visible_entries(folder: Path) -> list[Path]:
    """Every entry of ``folder`` but the hidden ones (``.DS_Store``, editor files), of any kind (files,
    folders, FIFOs), sorted by name: a reader picks its slice files by name from these and checks each
    with :func:`~strokeseg.data.input_files.require_regular`, so that a folder or FIFO named like a
    slice is an error instead of a slice silently left out."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))


def visible_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder``, hidden ones left out, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def _listed(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:_MAX_LISTED])
    return shown + (", ..." if len(numbers) > _MAX_LISTED else "")


def number_files(folder: Path, numbered: Iterable[tuple[int, Path]]) -> dict[int, Path]:
    """``{number: file}``; one number written by two files (``01.png``, ``1.png``) is an error."""
    found: dict[int, Path] = {}
    for number, path in numbered:
        if number in found:
            first, second = sorted((found[number].name, path.name))
            raise InputError(folder, f"slice number {number} appears twice ({first}, {second})")
        found[number] = path
    return found


def check_consecutive(folder: Path, numbers: Iterable[int]) -> list[int]:
    """The numbers in numeric order; an error unless they form one run without gaps."""
    ordered = sorted(numbers)
    if not ordered:
        return ordered
    lo, hi = ordered[0], ordered[-1]
    if hi - lo + 1 != len(ordered):
        present = set(ordered)
        missing = [n for n in range(lo, hi + 1) if n not in present]
        raise InputError(folder, f"slice numbers have a gap: {_listed(missing)} missing "
                                 f"(found {len(ordered)} slices numbered {lo}..{hi})")
    return ordered


def pair_slices(images: Mapping[int, Path], masks: Mapping[int, Path], folder: Path,
                mask_for: Callable[[Path], Path], image_for: Callable[[Path], Path]) -> tuple[SlicePair, ...]:
    """The image/mask pairs of one patient in numeric slice order.

    ``images`` and ``masks`` are numbered files (:func:`number_files`); ``mask_for``/``image_for``
    give the expected partner's path, so that a missing one is named exactly. ``folder`` (the
    patient's) is named by order errors.
    """
    if not images:
        raise InputError(folder, "no slice images in this patient folder")
    for number, image in sorted(images.items()):
        if number not in masks:
            raise InputError(mask_for(image), f"mask file not found for image {image.name}")
    for number, mask in sorted(masks.items()):
        if number not in images:
            raise InputError(image_for(mask), f"image file not found for mask {mask.name}")
    return tuple(SlicePair(n, images[n], masks[n]) for n in check_consecutive(folder, images))


# --- pixels ---------------------------------------------------------------------------------------

def read_pixels(path: Path) -> np.ndarray:
    """A PNG or TIFF as stored (bit depth and channels kept; colour in OpenCV's BGR order)."""
    path = require_regular(path)          # a FIFO would block cv2.imread
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InputError(path, "unreadable image (not a PNG/TIFF that OpenCV can decode)")
    return array


def opaque_colour(array: np.ndarray, path: Path) -> np.ndarray:
    """A colour array without its alpha channel; transparent pixels are an error (their value is undefined)."""
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        channels = 1 if array.ndim == 2 else array.shape[2]
        raise InputError(path, f"{channels}-channel image, expected 3 colour channels")
    if array.shape[2] == 4:
        if not np.all(array[..., 3] == np.iinfo(array.dtype).max):
            raise InputError(path, "image has transparent pixels (alpha channel)")
        array = array[..., :3]
    return array


def grayscale(array: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D array: grayscale as stored, or a colour image whose channels are all equal."""
    if array.ndim == 2:
        return array
    colour = opaque_colour(array, path)
    first = colour[..., 0]
    if not (np.array_equal(first, colour[..., 1]) and np.array_equal(first, colour[..., 2])):
        raise InputError(path, "colour image (its channels differ), expected grayscale")
    return first


def require_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype != np.uint8:
        raise InputError(path, f"{array.dtype} pixels, expected 8-bit (uint8) images")
    return array


def mask_scale(mask: np.ndarray) -> int:
    """The value that means "fully lesion" in this file: 1 for 0/1 masks, else the type's maximum."""
    if mask.size == 0 or int(mask.max()) <= 1:
        return 1
    return int(np.iinfo(mask.dtype).max)


def binarise_mask(array: np.ndarray, path: Path) -> np.ndarray:
    """The module's binarisation rule: lesion where the value is > half the file's scale; uint8 {0, 1}."""
    mask = grayscale(array, path)
    if mask.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"{mask.dtype} mask pixels, expected 8- or 16-bit")
    return (mask > mask_scale(mask) / 2).view(np.uint8)


# --- NIfTI ----------------------------------------------------------------------------------------

def checked_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``--spacing`` as three positive finite floats (mm), or None when not given."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"--spacing must be three positive voxel sizes in mm (x, y, z); got {spacing!r}")
    return values[0], values[1], values[2]


def spacing_affine(spacing: Sequence[float] | None) -> np.ndarray:
    """``diag(sx, sy, sz, 1)``; unit voxels when the spacing is unknown."""
    return np.diag([*(UNIT_SPACING if spacing is None else spacing), 1.0]).astype(np.float64)


def _reference(spacing: Sequence[float] | None) -> nib.Nifti1Image:
    """A 1-voxel image whose header carries the affine and the units every written volume gets."""
    image = nib.Nifti1Image(np.zeros((1, 1, 1), dtype=np.uint8), spacing_affine(spacing))
    # Unknown (0) when the spacing is a placeholder: a reader of the file must not take it for mm.
    image.header.set_xyzt_units(xyz="mm" if spacing is not None else "unknown", t="unknown")
    return image


def write_volume(path: Path, volume: np.ndarray, spacing: Sequence[float] | None) -> None:
    """One uint8 volume as NIfTI (atomically), with the affine and units of :func:`_reference`."""
    write_nifti(path, volume, reference=_reference(spacing), dtype=np.uint8)


# --- materialising --------------------------------------------------------------------------------

# Lists one patient's slices again from the subject's folders (cheap; the checks of ``read``).
SliceLister = Callable[[Subject], Sequence[SlicePair]]
# Reads one slice image file: {channel name: 2-D uint8 array}, for the channel names asked.
ChannelReader = Callable[[Path, Sequence[str]], Mapping[str, np.ndarray]]


class _Stacker:
    """Allocates (W, H, N) volumes and checks that every slice has the first slice's size."""

    def __init__(self, count: int):
        self.count = count
        self.shape: tuple[int, int] | None = None     # (rows, columns) of the first slice
        self.first: Path | None = None

    def check_size(self, path: Path, image: np.ndarray, what: str = "image") -> None:
        rows, cols = image.shape[:2]
        if self.shape is None:
            self.shape, self.first = (rows, cols), path
        elif (rows, cols) != self.shape:
            raise InputError(path, f"{what} is {cols}x{rows} pixels (width x height), but this patient's "
                                   f"first slice {self.first.name} is {self.shape[1]}x{self.shape[0]}")

    def empty(self) -> np.ndarray:
        rows, cols = self.shape
        return np.zeros((cols, rows, self.count), dtype=np.uint8)


@dataclass(frozen=True)
class Materialiser:
    """``materialise(subject, folder) -> Subject`` of a slice-folder cohort (picklable: module-level parts).

    Stacks the subject's slices (``list_slices``, in numeric order) into one (W, H, N) uint8 volume
    per channel of ``subject.channels`` (``read_channels``) and one binarised mask volume, and
    writes ``<subject>_<channel>.nii.gz`` and ``<subject>_mask.nii.gz`` into ``folder``.
    """

    list_slices: SliceLister
    read_channels: ChannelReader
    spacing: tuple[float, float, float] | None = None

    def __call__(self, subject: Subject, folder: Path) -> Subject:
        folder = Path(folder)
        names = [name for name, _ in subject.channels]
        volumes, mask = self.stack(subject, names)
        folder.mkdir(parents=True, exist_ok=True)
        channels = []
        for name in names:
            path = folder / f"{subject.subject}_{name}.nii.gz"
            write_volume(path, volumes[name], self.spacing)
            channels.append((name, path))
        mask_path = folder / f"{subject.subject}_mask.nii.gz"
        write_volume(mask_path, mask, self.spacing)
        return dataclasses.replace(subject, channels=tuple(channels), mask=mask_path)

    def stack(self, subject: Subject, names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The channel volumes ``{name: (W, H, N)}`` and the mask volume (W, H, N) in {0, 1}."""
        pairs = self.list_slices(subject)
        stacker = _Stacker(len(pairs))
        volumes: dict[str, np.ndarray] = {}
        mask_volume: np.ndarray | None = None
        for k, pair in enumerate(pairs):
            channels = self.read_channels(pair.image, names)
            for name in names:
                stacker.check_size(pair.image, channels[name])
                if name not in volumes:
                    volumes[name] = stacker.empty()
                volumes[name][:, :, k] = channels[name].T     # x = column, y = row
            mask = binarise_mask(read_pixels(pair.mask), pair.mask)
            stacker.check_size(pair.mask, mask, what="mask")
            if mask_volume is None:
                mask_volume = stacker.empty()
            mask_volume[:, :, k] = mask.T
        return volumes, mask_volume


def spacing_notes(spacing: tuple[float, float, float] | None) -> tuple[str, ...]:
    """What a slice-folder cohort records about its voxel size."""
    if spacing is None:
        return ("no --spacing: volumes written with 1x1x1 voxels and NIfTI units 'unknown'; "
                "sizes and distances are in voxels, not mm",)
    return (f"--spacing {spacing[0]:g},{spacing[1]:g},{spacing[2]:g} mm (x = image column, y = image row, "
            "z = slice step); NIfTI units mm",)


AXES_NOTE = ("slices stacked in numeric order of their file numbers; volume[x, y, z] = column x, row y "
             "of slice z (each slice transposed)")

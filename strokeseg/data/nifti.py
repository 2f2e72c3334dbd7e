"""NIfTI read/write that keeps affine and header, and validation that names the file and the fault.

Every fault is an :class:`~strokeseg.errors.InputError` whose message is ``"<path>: <fault>"`` on
one line, with a short lower-case fault (``file not found``, ``symbolic link loop``, ``not a regular
file (FIFO)``, ``empty file``, ``not a NIfTI file``, ``corrupt or truncated gzip (...)``, ``singular
affine``, ``zero voxel size``, ``4-D volume (shape ...), expected 3-D``, ``non-finite intensities
(...)``, ``constant image (...)``, ``mask shape ... differs from T1 shape ...``, ``mask affine differs
from T1 affine``, ``mask has values other than 0 and 1 ...``, ``empty mask (no lesion voxels)``).

A path is checked with ``os.stat`` before it is opened (:func:`check_regular_file`): a FIFO, socket or
device is refused without being opened (opening a FIFO would wait for a writer forever), as are a
folder, a symbolic link loop and an empty file.

Geometry (:func:`load_image`): the affine nibabel derives from the header must be finite and
invertible (a singular sform is a fault). The header's own voxel sizes (``pixdim``) and codes are
read before nibabel repairs them: a zero voxel size where no sform gives the geometry is a fault
(nibabel would silently assume 1 mm, making lesion volumes and any resampling meaningless); a
header without any orientation (qform and sform codes 0, nibabel then assumes its default affine)
or with zero ``pixdim`` beside a valid sform is accepted with a warning
(:func:`geometry_warning`), which ``strokeseg predict`` reports in its ``warning`` column.

The voxel data of a file are read exactly once (``np.asanyarray(img.dataobj)``, no memory map):
:func:`load_image` returns an image whose data object is that in-memory array, so later
``np.asanyarray(img.dataobj)`` calls are free and never touch the file again. ``.nii.gz`` files are
decompressed by ISA-L (``isal.igzip``: the same gzip format and checks as Python's ``gzip`` in about
0.6 × its time), because reading every volume is much of what the data stages 01 and 03 do.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib
from nibabel.filebasedimages import ImageFileError
from nibabel.fileholders import FileHolder
from nibabel.spatialimages import HeaderDataError, HeaderTypeError

from strokeseg.data.input_files import irregularity
from strokeseg.errors import InputError
from strokeseg.workdir import atomic_path

_GZIP_MAGIC = b"\x1f\x8b"
_DRAIN_CHUNK = 1 << 20
_MAX_LISTED_VALUES = 5


@dataclass(frozen=True)
class SubjectVolumes:
    """A validated T1 volume and its lesion mask on the same grid."""

    t1: np.ndarray                       # 3-D, finite, not constant: integers as stored, else float32
    mask: np.ndarray                     # uint8 {0, 1}, same shape, at least one lesion voxel
    affine: np.ndarray                   # 4x4 float64 (the T1's)
    header: nib.Nifti1Header             # of the T1
    zooms: tuple[float, float, float]    # voxel size in mm


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def load_image(path, kind: str = "image") -> nib.Nifti1Image:
    """Open a NIfTI file (``.nii`` or ``.nii.gz``) and read all its voxels once.

    Faults raise :class:`InputError`. Compression is detected from the content (gzip magic), and a
    gzip stream is read to its end, so a truncated or corrupted ``.nii.gz`` (cut anywhere, or a
    failing CRC) is reported as such. ``kind`` ("image", "T1", "mask" ...) only words the
    not-found fault. The returned image holds the data in memory (scaled by the header's
    slope/intercept, as nibabel reads it); header and affine (sform/qform and codes) are the file's.
    """
    path = Path(path)
    check_regular_file(path, kind)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
    except OSError as exc:
        raise InputError(path, f"cannot read ({_one_line(exc)})") from None
    if not compressed and _is_gzip(path):
        raise InputError(path, "not a NIfTI file (named .gz but not gzip-compressed)")
    stage = "header"
    try:
        with (igzip.open(path, "rb") if compressed else open(path, "rb")) as fileobj:
            head = fileobj.read(540)
            image_class = _image_class(path, head)
            fileobj.seek(0)
            holder = FileHolder(filename=str(path), fileobj=fileobj)
            img = image_class.from_file_map({"image": holder, "header": holder})
            stage = "data"
            data = np.asanyarray(img.dataobj)
            if compressed:  # read to the end of the stream: checks the CRC and the length
                while fileobj.read(_DRAIN_CHUNK):
                    pass
    except InputError:
        raise
    except (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"corrupt or truncated gzip ({_one_line(exc)})") from None
    except (ImageFileError, HeaderDataError, HeaderTypeError) as exc:
        raise InputError(path, f"not a NIfTI file ({_one_line(exc)})") from None
    except MemoryError:
        raise InputError(path, "voxel data too large to read (damaged header?)") from None
    except (OSError, ValueError, TypeError) as exc:
        # nibabel: "Expected N bytes, got M bytes" when the voxel data are cut short
        fault = "not a NIfTI file" if stage == "header" else "truncated data"
        raise InputError(path, f"{fault} ({_one_line(exc)})") from None
    warning = _check_geometry(path, image_class, head, img)
    # Same affine as the header's best affine, so sform/qform and their codes are kept as they are.
    loaded = image_class(data, img.affine, img.header, extra={GEOMETRY_WARNING: warning} if warning else None)
    loaded.set_filename(str(path))
    return loaded


GEOMETRY_WARNING = "strokeseg_geometry_warning"     # key of a loaded image's ``extra``


def check_regular_file(path, kind: str = "image") -> None:
    """Refuse, without opening it, what is not a readable regular file
    (:func:`strokeseg.data.input_files.irregularity`: missing, a broken link, a symbolic link loop, a
    folder, a FIFO, socket or device) and an empty file; faults raise :class:`InputError` naming the path."""
    path = Path(path)
    what = irregularity(path)
    if what == "not found":
        raise InputError(path, f"{kind} file not found")
    if what == "a broken symbolic link":
        raise InputError(path, f"{kind} file not found (dangling symbolic link to {os.readlink(path)})")
    if what is not None and what.startswith("cannot"):
        raise InputError(path, what)
    if what is not None:
        raise InputError(path, f"not a regular file ({what}), expected a {kind} NIfTI file (not opened)")
    if os.stat(path).st_size == 0:
        raise InputError(path, "empty file (0 bytes), not a NIfTI file")


def _raw_header(image_class, head: bytes):
    """The header as stored (nibabel's checks repair zero ``pixdim`` when it loads a file)."""
    header_class = image_class.header_class
    size = header_class.sizeof_hdr
    endianness = "<" if int.from_bytes(head[:4], "little") == size else ">"
    return header_class(head[:size], endianness=endianness, check=False)


def _check_geometry(path: Path, image_class, head: bytes, img) -> str:
    """Refuse a singular or non-finite affine and unknown voxel sizes; the warning of a header whose
    geometry nibabel had to assume ("" when there is none). See the module docstring."""
    raw = _raw_header(image_class, head)
    qform_code, sform_code = int(raw["qform_code"]), int(raw["sform_code"])
    source = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "default affine (no qform or sform)"
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, f"non-finite values in the affine (from the {source})")
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    bad_pixdim = bool(np.any(~np.isfinite(pixdim) | (pixdim == 0)))
    shown = " x ".join(f"{v:g}" for v in pixdim)
    if bad_pixdim and sform_code <= 0:
        raise InputError(path, f"zero voxel size in the header (pixdim {shown}) and no sform to take it from: "
                               "the voxel size is unknown (nibabel would assume 1 mm, which makes lesion volumes "
                               "and resampling meaningless); fix the header")
    matrix = affine[:3, :3]
    zooms = np.linalg.norm(matrix, axis=0)
    if np.any(zooms == 0) or abs(np.linalg.det(matrix)) <= 1e-6 * float(np.prod(zooms)):
        raise InputError(path, f"singular affine (the {source} maps the voxel axes onto fewer than 3 dimensions: "
                               f"voxel sizes {' x '.join(f'{z:g}' for z in zooms)}); the image has no valid "
                               "position in space; fix the header")
    if bad_pixdim:
        return (f"zero voxel size in pixdim ({shown}): the sform's voxel size "
                f"({' x '.join(f'{z:g}' for z in zooms)} mm) was used")
    if sform_code <= 0 and qform_code <= 0:
        return (f"no orientation in the header (qform and sform codes 0): assumed "
                f"{''.join(nib.aff2axcodes(affine))} axes, voxel size {' x '.join(f'{z:g}' for z in zooms)} mm "
                "from pixdim, centred on the volume (nibabel's default); a mask on another grid may be misplaced")
    return ""


def geometry_warning(img) -> str:
    """What :func:`load_image` had to assume about an image's geometry ("" when nothing)."""
    extra = getattr(img, "extra", None) or {}
    return str(extra.get(GEOMETRY_WARNING, ""))


def _image_class(path: Path, head: bytes):
    """NIfTI-1 or NIfTI-2 single file, from ``sizeof_hdr`` (either byte order) and the magic."""
    if len(head) < 4:
        raise InputError(path, "not a NIfTI file (shorter than a NIfTI header)")
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in sizes:
        image_class, magic = nib.Nifti1Image, head[344:348]
    elif 540 in sizes:
        image_class, magic = nib.Nifti2Image, head[4:8]
    else:
        raise InputError(path, "not a NIfTI file (no NIfTI-1/2 header)")
    if magic[:3] in (b"ni1", b"ni2"):
        raise InputError(path, "not a NIfTI file (header of a .hdr/.img pair; expected one .nii/.nii.gz file)")
    if magic[:3] not in (b"n+1", b"n+2"):
        raise InputError(path, "not a NIfTI file (no NIfTI magic; Analyze or damaged header)")
    return image_class


def _check_3d(path, data: np.ndarray) -> None:
    if data.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported voxel data type {data.dtype}, expected numbers")
    if data.ndim != 3:
        raise InputError(path, f"{data.ndim}-D volume (shape {tuple(data.shape)}), expected 3-D")
    if data.size == 0:
        raise InputError(path, f"empty volume (shape {tuple(data.shape)})")


def load_t1(path, kind: str = "T1") -> tuple[np.ndarray, nib.Nifti1Image]:
    """A T1 volume (3-D, finite, not constant) and its image (affine and header); any image channel
    is validated alike (``kind`` names it in the not-found fault, e.g. "dwi").

    Integer data stay as stored (finite by construction; a float32 copy would cost a 35 MB
    volume per subject for nothing); floating-point data, scaled data included, come as float32.
    """
    img = load_image(path, kind)
    raw = np.asanyarray(img.dataobj)
    _check_3d(path, raw)
    data = raw
    if raw.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(raw, dtype=np.float32)
        finite = np.isfinite(data)
        if not finite.all():
            bad = data.size - int(np.count_nonzero(finite))
            raise InputError(path, f"non-finite intensities ({bad} NaN/inf voxels)")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise InputError(path, f"constant image (every voxel is {lo.item():g})")
    return data, img


def _distinct_bad_values(data: np.ndarray) -> str:
    bad = np.unique(data[(data != 0) & (data != 1)])
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in bad[:_MAX_LISTED_VALUES].tolist())
    return shown + (", ..." if bad.size > _MAX_LISTED_VALUES else "")


def load_mask(path, binarize: bool = False, shape=None, affine=None,
              allow_empty: bool = False) -> np.ndarray:
    """A lesion mask as uint8 {0, 1}.

    ``shape``/``affine`` (the T1's) are checked when given. Values other than 0 and 1 are a fault
    unless ``binarize`` is true, in which case the mask is ``mask > 0``. An empty mask is a fault
    unless ``allow_empty``.
    """
    return load_mask_image(path, binarize, shape, affine, allow_empty)[0]


def load_mask_image(path, binarize: bool = False, shape=None, affine=None,
                    allow_empty: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """:func:`load_mask` and the file's image (header, affine), for callers that need its grid."""
    img = load_image(path, "mask")
    data = np.asanyarray(img.dataobj)
    _check_3d(path, data)
    if shape is not None and tuple(data.shape) != tuple(int(s) for s in shape):
        raise InputError(path, f"mask shape {tuple(data.shape)} differs from T1 shape "
                               f"{tuple(int(s) for s in shape)}")
    if affine is not None and not same_affine(img.affine, affine):
        diff = float(np.max(np.abs(np.asarray(img.affine, float) - np.asarray(affine, float))))
        raise InputError(path, f"mask affine differs from T1 affine (max difference {diff:.4g})")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = data.size - int(np.count_nonzero(finite))
            raise InputError(path, f"non-finite mask values ({bad} NaN/inf voxels)")
    if data.dtype == np.bool_:
        mask = data.view(np.uint8)
    elif binarize:
        mask = (data > 0).view(np.uint8)
    elif data.dtype.kind in "ui":
        if data.min() < 0 or data.max() > 1:
            raise InputError(path, f"mask has values other than 0 and 1 ({_distinct_bad_values(data)}); "
                                   "pass binarize=True to use mask > 0")
        mask = data.astype(np.uint8, copy=False)
    else:
        if not np.all((data == 0) | (data == 1)):
            raise InputError(path, f"mask has values other than 0 and 1 ({_distinct_bad_values(data)}); "
                                   "pass binarize=True to use mask > 0")
        mask = data.astype(np.uint8)
    if not allow_empty and not mask.any():
        raise InputError(path, "empty mask (no lesion voxels)")
    return mask, img


def load_pair(t1_path, mask_path, binarize: bool = False) -> SubjectVolumes:
    """The T1 and its lesion mask, validated and checked to lie on the same grid."""
    t1, img = load_t1(t1_path)
    affine = np.asarray(img.affine, dtype=np.float64)
    mask = load_mask(mask_path, binarize=binarize, shape=t1.shape, affine=affine)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return SubjectVolumes(t1=t1, mask=mask, affine=affine, header=img.header, zooms=zooms)


@dataclass(frozen=True)
class ChannelVolumes:
    """A subject's image channels and lesion mask, validated and checked to share one grid."""

    images: tuple[np.ndarray, ...]       # one 3-D volume per channel, as :func:`load_t1` returns them
    mask: np.ndarray | None              # uint8 {0, 1}; None for a case without a mask
    affine: np.ndarray                   # 4x4 float64 (the first channel's)
    header: nib.Nifti1Header             # of the first channel
    image: nib.Nifti1Image               # the first channel's image (header and affine, for outputs)
    zooms: tuple[float, float, float]
    warnings: tuple[str, ...] = field(default=())   # "<file>: <what was assumed>" (:func:`geometry_warning`)


def load_channels(channels, mask_path=None, binarize: bool = False, allow_empty: bool = False) -> ChannelVolumes:
    """Every channel ``(name, path)`` of a subject and its mask, all on the first channel's grid.

    Each channel is validated as :func:`load_t1` validates a T1 (3-D, finite, not constant); a
    channel or mask on another grid is a fault naming that file and the first channel. Without a
    ``mask_path`` (a case to predict) the mask is None."""
    channels = list(channels)
    if not channels:
        raise ValueError("load_channels needs at least one channel")
    images, first, first_name, warnings = [], None, "", []
    for name, path in channels:
        data, img = load_t1(path, "T1" if name == "t1w" else name)
        if geometry_warning(img):
            warnings.append(f"{path}: {geometry_warning(img)}")
        if first is None:
            first, first_name = img, name
        elif tuple(data.shape) != tuple(first.shape[:3]):
            raise InputError(path, f"channel {name} has shape {tuple(data.shape)}, channel {first_name} "
                                   f"{tuple(first.shape[:3])}: channels must share one grid")
        elif not same_affine(img.affine, first.affine):
            raise InputError(path, f"channel {name} has another affine than channel {first_name}: "
                                   "channels must share one grid")
        images.append(data)
    affine = np.asarray(first.affine, dtype=np.float64)
    mask = None if mask_path is None else load_mask(mask_path, binarize=binarize, shape=images[0].shape,
                                                    affine=affine, allow_empty=allow_empty)
    zooms = tuple(float(z) for z in first.header.get_zooms()[:3])
    return ChannelVolumes(tuple(images), mask, affine, first.header, first, zooms, tuple(warnings))


def same_affine(a, b, atol: float = 1e-4) -> bool:
    """Whether two 4x4 affines (or images with ``.affine``) agree within ``atol``."""
    a = getattr(a, "affine", a)
    b = getattr(b, "affine", b)
    if a is None or b is None:
        return False
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=0.0, atol=atol))


def write_nifti(path, data, reference: nib.Nifti1Image | None = None, affine=None,
                dtype=np.uint8) -> None:
    """Write ``data`` as NIfTI atomically (:func:`strokeseg.workdir.atomic_path`).

    With a ``reference`` image the file gets its header (sform/qform and codes, zooms, units) and
    affine; ``affine`` overrides the reference's (the codes are then reset by nibabel). The data
    are cast to ``dtype``, written unscaled, and the display range is cleared. On failure nothing
    is left behind.
    """
    path = Path(path)
    if reference is None and affine is None:
        raise ValueError("write_nifti needs a reference image or an affine")
    dtype = np.dtype(dtype)
    array = np.asarray(data)
    if array.dtype != dtype:
        array = array.astype(dtype)
    if reference is not None:
        header = reference.header.copy()
        if not isinstance(header, nib.Nifti1Header):
            header = nib.Nifti1Header.from_header(header)
        affine = reference.affine if affine is None else affine
    else:
        header = nib.Nifti1Header()
    affine = np.asarray(affine, dtype=np.float64)
    header.set_data_dtype(dtype)
    header["cal_min"] = 0
    header["cal_max"] = 0
    img = nib.Nifti1Image(array, affine, header)
    with atomic_path(path) as tmp:       # keeps the extension: nibabel picks the format by it
        nib.save(img, tmp)

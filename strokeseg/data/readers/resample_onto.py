"""One volume resampled onto another volume's grid through world coordinates (used for ISLES'22 FLAIR).

ISLES'22 ships FLAIR on its own grid (e.g. 512×512×29 at 0.45×0.45×5 mm) while DWI, ADC and the
lesion mask share the DWI grid (112×112×73 at 2 mm). To use FLAIR as a channel, stage 01 writes it
resampled onto the DWI grid. The rule:

- every voxel centre of the target grid is mapped to the source's voxel coordinates through the
  two affines (``inv(source_affine) @ target_affine``), i.e. both volumes are assumed to be in the
  same scanner (world) space. That is what the headers say; it is **not registration**: head
  motion between the FLAIR and DWI acquisitions is not corrected.
- trilinear interpolation (:func:`strokeseg.data.resample.to_grid`, the package's one resampling
  through world coordinates): no overshoot, so the resampled FLAIR stays within the source's
  intensity range; target voxels outside the source's field of view are 0.
- the result is float32 and is written with the target file's header and affine, so the
  resampled FLAIR lies voxel for voxel on the DWI grid.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from strokeseg.data import resample
from strokeseg.data.nifti import load_image, write_nifti
from strokeseg.errors import InputError


def _source_volume(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The source file's voxels as a finite 3-D float32 array (a trailing axis of length 1 is dropped)."""
    img = load_image(path, "image")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:      # some converters write 3-D volumes as X×Y×Z×1
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"{data.ndim}-D volume (shape {tuple(data.shape)}), expected 3-D")
    if data.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported voxel data type {data.dtype}, expected numbers")
    data = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        # caught here, on the source: after resampling, the fault would name the written file
        raise InputError(path, f"non-finite intensities ({data.size - int(np.count_nonzero(finite))} NaN/inf voxels)")
    return data, img


def write_resampled(source: Path, reference: Path, out: Path) -> Path:
    """Write ``source`` resampled onto ``reference``'s grid as ``out`` (float32, reference's header/affine).

    Only the reference's header is read (its voxels are not needed). Returns ``out``.
    """
    data, img = _source_volume(Path(source))
    try:
        target = nib.load(str(reference))
    except (OSError, ValueError, ImageFileError, HeaderDataError) as exc:  # one line for the user
        raise InputError(reference, f"cannot read the NIfTI header ({exc.__class__.__name__}: {exc})") from None
    shape = tuple(int(s) for s in target.shape[:3])
    resampled = resample.to_grid(data, img.affine, shape, target.affine, order=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_nifti(out, resampled, reference=target, dtype=np.float32)
    return Path(out)

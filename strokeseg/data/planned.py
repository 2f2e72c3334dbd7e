"""One subject read from its files and placed on its plan grid (:mod:`strokeseg.data.grid_plan`).

Stage 01 (statistics), stage 03 (stores) and stage 10 (hold-out evaluation) read subjects through
:func:`load_planned`, so every stage sees the same plan-grid volumes. On a ``fixed`` plan the
volumes are the files' voxels as they are (no copy, no resampling: the ATLAS path is unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from strokeseg.data.grid_plan import GridPlan, NativeGrid
from strokeseg.data.nifti import load_channels


@dataclass(frozen=True)
class PlannedSubject:
    images: tuple[np.ndarray, ...]      # one plan-grid volume per channel (fixed plan: as stored)
    mask: np.ndarray                    # uint8 {0, 1} on the plan grid
    native: NativeGrid                  # the subject's own grid
    native_mask: np.ndarray             # the mask on the subject's own grid (the ground truth)
    image: nib.Nifti1Image              # the first channel's image: header and affine for outputs
    zooms: tuple[float, float, float]   # the subject's own voxel size

    @property
    def volume(self) -> np.ndarray:
        """The model input: the one channel (X, Y, Z), or the channels stacked (M, X, Y, Z)."""
        return self.images[0] if len(self.images) == 1 else np.stack(self.images)


def channel_paths(row, channels: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(channel, file) pairs of one cohort.csv row (the channel columns are named after the channels)."""
    return [(name, Path(getattr(row, name) if not isinstance(row, dict) else row[name])) for name in channels]


def load_planned(channels: list[tuple[str, Path]], mask_path: Path, plan: GridPlan, binarize: bool = False,
                 allow_empty: bool = False, images: bool = True) -> PlannedSubject:
    """The subject's channels (validated, and with ``images`` placed on its plan grid; without, as
    stage 01 needs only the mask there, ``images`` is empty) and its mask on the plan grid."""
    volumes = load_channels(channels, mask_path, binarize=binarize, allow_empty=allow_empty)
    native = NativeGrid(tuple(int(s) for s in volumes.images[0].shape), volumes.affine)
    plan.check_fixed(channels[0][1], native)
    placed = tuple(plan.to_plan(image, native) for image in volumes.images) if images else ()
    mask = plan.mask_to_plan(volumes.mask, native)
    return PlannedSubject(placed, mask, native, volumes.mask, volumes.image, volumes.zooms)

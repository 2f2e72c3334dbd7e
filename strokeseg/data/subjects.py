"""What a cohort is, whatever layout it came from: subjects with named image channels on one grid.

A :class:`Subject` is an id, a group (the patient: several sessions of one patient share a group
and never straddle folds), its image channels (modalities, in the cohort's channel order) and its
lesion mask. The channels and the mask of one subject share one voxel grid; different subjects may
have different grids (stage 01's grid plan brings them onto one).

Every reader (:mod:`strokeseg.data.readers`) returns a :class:`Cohort`. Readers of layouts whose
files are not NIfTI volumes on one grid (slice folders; a FLAIR resampled onto the DWI grid) also
give a ``materialise`` function: stage 01 calls it once per subject to write the subject's NIfTI
files, and every later stage reads only those.

Channel kinds choose the per-volume normalisation of stage 03:
``t1`` (today's ATLAS rule, ``convert.normalization``), ``mr`` (z-score of the volume's
foreground), ``ct`` (a clipped Hounsfield window) and ``image8`` (8-bit display images, already on
the 0..255 scale).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CHANNEL_KINDS = ("t1", "mr", "ct", "image8")
VOLUME_PLANES = ("axial", "sagittal", "coronal")
SLICE_PLANES = ("axial",)  # slice folders: the slices are axial; the other two planes are stacks of rows


@dataclass(frozen=True, order=True)
class Subject:
    subject: str                             # unique id, safe as a file name, e.g. "sub-strokecase0009"
    group: str                               # the patient; equal for sessions of one patient
    site: str                                # acquisition site when the layout says it, else ""
    channels: tuple[tuple[str, Path], ...]   # (channel name, file or folder), in the cohort's order
    mask: Path                               # lesion mask (or, before materialising, its source)

    def channel(self, name: str) -> Path:
        for key, path in self.channels:
            if key == name:
                return path
        raise KeyError(name)


@dataclass(frozen=True)
class Cohort:
    kind: str                                # reader name: atlas, isles22, nnunet, png_slices, kaggle_3m, ...
    root: Path                               # the folder it was read from
    channels: tuple[str, ...]                # channel names, in input order
    channel_kinds: tuple[str, ...]           # one of CHANNEL_KINDS per channel
    subjects: tuple[Subject, ...]            # sorted by subject id
    planes: tuple[str, ...] = VOLUME_PLANES  # the planes a study on this cohort can use
    spacing_known: bool = True               # False: voxel sizes are not physical (slice folders without --spacing)
    allow_empty_masks: bool = False          # True where lesion-free subjects are part of the data
    # Writes one subject's NIfTI files into a folder and returns the subject pointing at them;
    # None when the files are NIfTI on one grid already. A module-level function (worker processes).
    materialise: Callable[["Subject", Path], "Subject"] | None = None
    notes: tuple[str, ...] = field(default=())  # what the reader decided (logged and kept in the manifest)

    def __post_init__(self):
        if len(self.channels) != len(self.channel_kinds):
            raise ValueError("one channel kind per channel")
        if any(kind not in CHANNEL_KINDS for kind in self.channel_kinds):
            raise ValueError(f"channel kinds must be among {CHANNEL_KINDS}")

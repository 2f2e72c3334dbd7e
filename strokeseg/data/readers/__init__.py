"""Cohort readers: one module per dataset layout, each returning a :class:`~strokeseg.data.subjects.Cohort`.

Every reader module has ``KIND`` (its ``--dataset`` name), ``matches(root) -> bool`` (whether a
folder looks like its layout, used to detect the kind) and ``read(root, options) -> Cohort``.
Faults are :class:`~strokeseg.errors.InputError` naming the file or folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from strokeseg.data.readers import atlas, isles22, kaggle_3m, nnunet_raw, png_slices
from strokeseg.data.subjects import Cohort
from strokeseg.errors import InputError

READERS = {module.KIND: module for module in (atlas, isles22, nnunet_raw, png_slices, kaggle_3m)}
KINDS = tuple(READERS)


@dataclass(frozen=True)
class ReaderOptions:
    channels: tuple[str, ...] | None = None      # channel names to use, in this order; None: the reader's default
    label: int = 1                               # nnU-Net raw: the label value that is the lesion
    resample_flair: bool = False                 # ISLES'22: accept FLAIR by resampling it onto the DWI grid
    spacing: tuple[float, float, float] | None = None  # slice folders: voxel size in mm (else unknown)


def detect(root: Path) -> str:
    """The one reader whose layout ``root`` has; an error when none or several match."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found" if not root.exists() else "not a folder")
    found = [kind for kind, module in READERS.items() if module.matches(root)]
    if not found:
        raise InputError(root, f"no known dataset layout found (expected one of {', '.join(KINDS)}; "
                               "give --dataset to say which)")
    if len(found) > 1:
        raise InputError(root, f"matches several dataset layouts ({', '.join(found)}); give --dataset to choose")
    return found[0]


def read_cohort(root: Path, kind: str | None = None, options: ReaderOptions = ReaderOptions()) -> Cohort:
    """The cohort in ``root``, read by the ``kind`` reader or by the one whose layout matches."""
    root = Path(root).expanduser().resolve()
    if kind is None:
        kind = detect(root)
    if kind not in READERS:
        raise InputError(root, f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    return READERS[kind].read(root, options)

"""ATLAS v2.0 BIDS (and the synthetic ATLAS-like cohort): one T1w channel, one MNI grid.

The layout and its rules are :mod:`strokeseg.data.cohort`'s; this module only states them as a
:class:`~strokeseg.data.subjects.Cohort`. A subject is its own group (ATLAS has one session each).
"""
from __future__ import annotations

from pathlib import Path

from strokeseg.data import cohort
from strokeseg.data.subjects import VOLUME_PLANES, Cohort, Subject
from strokeseg.errors import InputError

KIND = "atlas"
CHANNEL = "t1w"


def matches(root: Path) -> bool:
    """A ``sub-*/ses-*/anat`` folder below ``root`` holds a T1w (``.nii.gz`` or ``.nii``)."""
    return cohort.has_t1w(Path(root))


def read(root: Path, options) -> Cohort:
    if options.channels not in (None, (CHANNEL,)):
        raise InputError(root, f"ATLAS has one channel, {CHANNEL}; got --channels {','.join(options.channels)}")
    subjects = tuple(Subject(s.subject, s.subject, s.site, ((CHANNEL, s.t1w),), s.mask)
                     for s in cohort.discover(Path(root)))
    return Cohort(KIND, Path(root), (CHANNEL,), ("t1",), subjects, VOLUME_PLANES)

"""Where subjects come from: the ATLAS v2.0 BIDS layout (the synthetic generator writes the same).

Layout, below any folder::

    .../Training/R0XX/sub-rXXXsYYY/ses-1/anat/sub-rXXXsYYY_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    .../Training/R0XX/sub-rXXXsYYY/ses-1/anat/sub-rXXXsYYY_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

:func:`discover` accepts the ATLAS root, its ``Training`` folder or any folder above, finds every
``sub-*/ses-*/anat/*<T1W_SUFFIX>`` (hidden folders are skipped), pairs each T1w with the lesion
mask in the same folder, and returns the subjects sorted by id. The subject id is the ``sub-*``
folder name; the site is upstream's rule (regex ``r(\\w{3})`` on the id, upper-cased).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from strokeseg.errors import InputError

T1W_SUFFIX = "_space-MNI152NLin2009aSym_T1w.nii.gz"
MASK_SUFFIX = "_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
COHORT_COLUMNS = ("subject_name", "site", "t1w", "mask")

_SITE = re.compile(r"r(\w{3})")


@dataclass(frozen=True, order=True)
class SubjectFiles:
    subject: str   # e.g. "sub-r001s001"
    site: str      # e.g. "R001"
    t1w: Path
    mask: Path


def site_of(subject: str) -> str:
    """Upstream's site rule: the first ``r`` and the three word characters after it, upper-cased.

    ``"sub-r001s001"`` -> ``"R001"``. Raises ``ValueError`` when the id has no such part.
    """
    match = _SITE.search(subject)
    if match is None:
        raise ValueError(f"no site in subject id {subject!r} (expected sub-rXXX...)")
    return match.group(0).upper()


def _t1w_files(root: Path) -> list[Path]:
    """Every ``sub-*/ses-*/anat/*<T1W_SUFFIX>`` under ``root``, in sorted order.

    Hidden folders are skipped, ``anat`` folders are not descended into, and symbolic links to
    folders are followed once (each real folder is visited at most once).
    """
    found: list[Path] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        if here.name == "anat":
            dirs[:] = []
            session = here.parent
            if session.name.startswith("ses-") and session.parent.name.startswith("sub-"):
                found += [here / f for f in files if f.endswith(T1W_SUFFIX) and not f.startswith(".")]
    return sorted(found)


def discover(dataset_dir: Path) -> list[SubjectFiles]:
    """The subjects (T1w + lesion mask) of an ATLAS v2.0-style BIDS tree, sorted by subject id."""
    root = Path(dataset_dir)
    if not root.exists():
        raise InputError(root, "folder not found")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    t1ws = _t1w_files(root)
    if not t1ws:
        raise InputError(root, f"no ATLAS T1w files found (expected sub-*/ses-*/anat/*{T1W_SUFFIX})")

    by_subject: dict[str, Path] = {}
    for t1w in t1ws:
        session = t1w.parent.parent
        subject = session.parent.name
        expected_prefix = f"{subject}_{session.name}_"
        if not t1w.name.startswith(expected_prefix):
            raise InputError(t1w, f"file name does not match its folders (expected {expected_prefix}...)")
        if subject in by_subject:
            first = by_subject[subject]
            if first.parent.parent.parent == session.parent and first.parent.parent != session:
                raise InputError(session.parent, f"{subject} has several sessions "
                                 f"({first.parent.parent.name}, {session.name}); expected one")
            raise InputError(t1w, f"subject {subject} found twice: {first} and {t1w}")
        by_subject[subject] = t1w

    subjects = []
    for subject, t1w in sorted(by_subject.items()):
        mask = t1w.with_name(t1w.name[: -len(T1W_SUFFIX)] + MASK_SUFFIX)
        if not mask.is_file():
            raise InputError(mask, f"missing lesion mask for {subject}")
        try:
            site = site_of(subject)
        except ValueError as exc:
            raise InputError(t1w, str(exc)) from None
        subjects.append(SubjectFiles(subject=subject, site=site, t1w=t1w, mask=mask))
    return subjects


def cohort_frame(subjects: list[SubjectFiles]) -> pd.DataFrame:
    """One row per subject: subject_name, site, t1w, mask (paths as strings), in the given order."""
    return pd.DataFrame(
        [(s.subject, s.site, str(s.t1w), str(s.mask)) for s in subjects],
        columns=list(COHORT_COLUMNS),
    )

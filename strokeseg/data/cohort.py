"""Where subjects come from: the ATLAS v2.0 BIDS layout (the synthetic generator writes the same).

Layout, below any folder::

    .../Training/R0XX/sub-rXXXsYYY/ses-1/anat/sub-rXXXsYYY_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    .../Training/R0XX/sub-rXXXsYYY/ses-1/anat/sub-rXXXsYYY_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

:func:`discover` accepts the ATLAS root, its ``Training`` folder or any folder above and returns
the subjects sorted by id. The rule, which drops no subject silently:

- Every ``sub-*/ses-*/anat`` folder below the root (hidden folders are skipped, symbolic links to
  folders followed once) that holds anything but hidden entries is a subject, or an
  :class:`~strokeseg.errors.InputError` naming the folder or file: it must hold exactly one T1w
  (``<sub>_<ses>_space-MNI152NLin2009aSym_T1w``) and, beside it, exactly one lesion mask
  (``<sub>_<ses>_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask``). Each may end in ``.nii.gz``
  or ``.nii``, independently of the other. Other files beside them are ignored; an empty ``anat``
  folder is not a subject.
- A T1w or mask that is not a regular file (a folder, a FIFO, a socket, a device, a broken link) is
  an error, found with ``os.stat`` before anything opens it (opening a FIFO would hang).
- A T1w whose name does not start with its folders' ``<sub>_<ses>_``, a subject found twice, a
  subject with several sessions, and a ``sub-*``/``ses-*``/``anat`` folder that cannot be read are
  errors; no ``anat`` folder with a T1w at all is an error naming the root.

The subject id is the ``sub-*`` folder name; the site is upstream's rule (regex ``r(\\w{3})`` on
the id, upper-cased). Only names and file kinds are read here, never voxels.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from strokeseg.data.input_files import require_regular
from strokeseg.errors import InputError

NIFTI_ENDINGS = (".nii.gz", ".nii")
T1W_STEM = "_space-MNI152NLin2009aSym_T1w"
MASK_STEM = "_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask"
T1W_SUFFIX = T1W_STEM + NIFTI_ENDINGS[0]          # the names ATLAS and the synthetic cohort use
MASK_SUFFIX = MASK_STEM + NIFTI_ENDINGS[0]
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


def _prefix(name: str, stem: str) -> str | None:
    """``name`` without ``stem`` and its NIfTI ending (``x_ses-1<stem>.nii`` -> ``x_ses-1``), else None."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(stem + ending):
            return name[: -len(stem + ending)]
    return None


def _unreadable(exc: OSError) -> None:
    """os.walk's error handler: a folder of the layout that cannot be listed would hide its subjects."""
    name = Path(exc.filename or "").name
    if name.startswith(("sub-", "ses-")) or name == "anat":
        raise InputError(exc.filename, f"cannot read folder ({exc.__class__.__name__}: {exc.strerror or exc})")


def _anat_folders(root: Path) -> Iterator[Path]:
    """Every ``sub-*/ses-*/anat`` folder under ``root``, in sorted walk order.

    Hidden folders are skipped, ``anat`` folders are not descended into, and symbolic links to
    folders are followed once (each real folder is visited at most once).
    """
    seen: set[str] = set()
    for folder, dirs, _ in os.walk(root, followlinks=True, onerror=_unreadable):
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
                yield here


def _visible(folder: Path) -> list[str]:
    """The names in ``folder`` that are not hidden (files, folders and anything else), sorted."""
    try:
        return sorted(name for name in os.listdir(folder) if not name.startswith("."))
    except OSError as exc:
        raise InputError(folder, f"cannot read folder ({exc.__class__.__name__}: {exc.strerror or exc})") from None


def _one(anat: Path, names: list[str], what: str) -> str | None:
    if len(names) > 1:
        raise InputError(anat, f"{len(names)} {what} files ({', '.join(names)}); keep one")
    return names[0] if names else None


def _t1w_of(anat: Path) -> Path | None:
    """The T1w of an ``anat`` folder; None when it holds only hidden entries, an error when it holds
    no T1w or several."""
    names = _visible(anat)
    if not names:
        return None
    t1w = _one(anat, [n for n in names if _prefix(n, T1W_STEM) is not None], "T1w")
    if t1w is None:
        expected = f"{anat.parent.parent.name}_{anat.parent.name}{T1W_STEM}"
        raise InputError(anat, f"no T1w file in this subject folder (expected {expected}.nii.gz or .nii)")
    return anat / t1w


def _mask_of(t1w: Path, subject: str) -> Path:
    """The lesion mask beside ``t1w``, with either NIfTI ending."""
    prefix = _prefix(t1w.name, T1W_STEM)
    wanted = {prefix + MASK_STEM + ending for ending in NIFTI_ENDINGS}
    mask = _one(t1w.parent, [n for n in _visible(t1w.parent) if n in wanted], "lesion mask")
    if mask is None:
        raise InputError(t1w.parent / (prefix + MASK_SUFFIX), f"missing lesion mask for {subject}")
    return require_regular(t1w.parent / mask)


def has_t1w(root: Path) -> bool:
    """Whether some ``sub-*/ses-*/anat`` folder under ``root`` holds a T1w-named entry (layout detection;
    stops at the first one, reads no file)."""
    try:
        for anat in _anat_folders(Path(root)):
            if any(_prefix(n, T1W_STEM) is not None for n in _visible(anat)):
                return True
    except InputError:
        return False
    return False


def discover(dataset_dir: Path) -> list[SubjectFiles]:
    """The subjects (T1w + lesion mask) of an ATLAS v2.0-style BIDS tree, sorted by subject id."""
    root = Path(dataset_dir)
    if not root.exists():
        raise InputError(root, "folder not found")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    t1ws = [t1w for t1w in map(_t1w_of, _anat_folders(root)) if t1w is not None]
    if not t1ws:
        raise InputError(root, f"no ATLAS T1w files found (expected sub-*/ses-*/anat/*{T1W_SUFFIX} or .nii)")

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
        require_regular(t1w)
        mask = _mask_of(t1w, subject)
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

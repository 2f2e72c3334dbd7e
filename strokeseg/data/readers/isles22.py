"""ISLES'22 (BIDS): DWI, ADC and optionally FLAIR per session, lesion masks under ``derivatives/``.

Layout (``root`` holds ``rawdata/`` and ``derivatives/``; ``root`` may also be ``rawdata/`` itself,
in which case its parent is used)::

    rawdata/sub-XXX/ses-YYY/sub-XXX_ses-YYY_dwi.nii.gz        modality files directly in the session
    rawdata/sub-XXX/ses-YYY/dwi/sub-XXX_ses-YYY_adc.nii.gz    ... or in subfolders (dwi/, anat/:
    rawdata/sub-XXX/ses-YYY/anat/sub-XXX_ses-YYY_FLAIR.nii.gz      the full release)
    derivatives/sub-XXX/ses-YYY/**/sub-XXX_ses-YYY_msk.nii.gz  the lesion mask, on the DWI grid

Rules:

- A session is a folder ``rawdata/sub-*/ses-*/``; its files are those directly in it and those in
  its direct subfolders. A file belongs to channel ``c`` when its name ends, case-insensitively, in
  ``_c.nii.gz`` or ``_c.nii`` (``_FLAIR.nii.gz`` is channel ``flair``). Other files (JSON sidecars,
  ``.png`` snapshots) are ignored.
- Channels are ``dwi``, ``adc`` and ``flair``, all of kind ``mr``; the default is ``("dwi", "adc")``
  and ``options.channels`` chooses others, in the given order.
- DWI, ADC and the mask share one grid; FLAIR has its own (higher in-plane resolution, thick
  slices). Asking for ``flair`` is therefore an error unless ``options.resample_flair``
  (``--resample-flair``): the cohort then gets :func:`materialise`, which writes the FLAIR
  resampled onto the DWI grid by world coordinates (:mod:`.resample_onto`; not registration).
- The mask of ``rawdata/sub-X/ses-Y`` is the one ``*_msk.nii.gz`` (or ``.nii``) anywhere under
  ``derivatives/sub-X/ses-Y/``.
- Subject id: ``sub-X`` when that subject has one session, ``sub-X_ses-Y`` when it has several;
  the group is ``sub-X`` (sessions of one patient never straddle folds); the site is unknown ("").
- Faults are one-line :class:`~strokeseg.errors.InputError` naming the folder or file: a session
  without a requested channel, two files for one channel, a missing or doubled mask, no sessions, a
  channel file or mask that is not a regular file (a folder, a FIFO: never opened).

Only file names are read here, never voxels: stage 01 validates the volumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from strokeseg.data.input_files import require_regular
from strokeseg.data.readers.resample_onto import write_resampled
from strokeseg.data.subjects import VOLUME_PLANES, Cohort, Subject
from strokeseg.errors import InputError

log = logging.getLogger(__name__)

KIND = "isles22"
CHANNELS = ("dwi", "adc", "flair")
DEFAULT_CHANNELS = ("dwi", "adc")
CHANNEL_KIND = "mr"
FLAIR = "flair"
MASK = "msk"
NIFTI_ENDINGS = (".nii.gz", ".nii")
RAWDATA, DERIVATIVES = "rawdata", "derivatives"
SUBJECT_PREFIX, SESSION_PREFIX = "sub-", "ses-"
FLAIR_OUT = "_flair.nii.gz"          # materialised file: <subject>_flair.nii.gz
RESAMPLE_NOTE = ("FLAIR resampled onto the DWI grid by world coordinates (trilinear, 0 outside the FLAIR); "
                 "this is not registration: motion between the acquisitions is not corrected")


@dataclass(frozen=True)
class _Session:
    subject: str          # sub-XXX
    session: str          # ses-YYY
    folder: Path          # rawdata/sub-XXX/ses-YYY


# ---------------------------------------------------------------------------------------- names

def _channel_of(name: str) -> str | None:
    """The lower-case suffix of a NIfTI file name (``x_ses-1_FLAIR.nii.gz`` -> ``flair``), else None."""
    lower = name.lower()
    for ending in NIFTI_ENDINGS:
        if lower.endswith(ending):
            stem = lower[: -len(ending)]
            return stem.rsplit("_", 1)[1] if "_" in stem else None
    return None


def _base(root: Path) -> Path:
    """The folder holding ``rawdata/``: ``root`` itself, or its parent when ``root`` is ``rawdata/``."""
    root = Path(root)
    if not (root / RAWDATA).is_dir() and root.name == RAWDATA:
        return root.parent
    return root


# ------------------------------------------------------------------------------------- listing

def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; an unreadable folder is an error naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(folder, f"cannot read folder ({exc.__class__.__name__}: {exc.strerror or exc})") from None


def _folders(folder: Path, prefix: str) -> list[Path]:
    return [p for p in _entries(folder) if p.name.startswith(prefix) and p.is_dir()]


def _session_files(folder: Path) -> list[Path]:
    """Entries directly in a session folder and in its direct subfolders (dwi/, anat/, ...), of any kind:
    the one chosen for a channel must be a regular file (checked by :func:`_channel_file`), so that a
    FIFO or a folder named like a NIfTI file is an error rather than skipped. A folder named like a
    NIfTI file is such an entry, not a subfolder."""
    files = []
    for entry in _entries(folder):
        if entry.is_dir() and _channel_of(entry.name) is None:
            files.extend(_entries(entry))
        else:
            files.append(entry)
    return files


def _sessions(rawdata: Path) -> list[_Session]:
    sessions = []
    for subject in _folders(rawdata, SUBJECT_PREFIX):
        found = _folders(subject, SESSION_PREFIX)
        if not found:
            raise InputError(subject, "subject folder without a ses-* session folder")
        sessions.extend(_Session(subject.name, ses.name, ses) for ses in found)
    return sessions


def matches(root: Path) -> bool:
    """Whether ``root`` (or ``root`` as ``rawdata/``) has a ``sub-*/ses-*`` session with a ``*_dwi.nii*`` file."""
    try:
        rawdata = _base(Path(root)) / RAWDATA
        if not rawdata.is_dir():
            return False
        for subject in _folders(rawdata, SUBJECT_PREFIX):
            for session in _folders(subject, SESSION_PREFIX):
                if any(_channel_of(p.name) == "dwi" for p in _session_files(session)):
                    return True
    except (OSError, InputError):  # an unreadable tree is not this layout, and detection must go on
        return False
    return False


# ------------------------------------------------------------------------------------ choosing

def _chosen_channels(options, base: Path) -> tuple[str, ...]:
    channels = DEFAULT_CHANNELS if options.channels is None else tuple(c.lower() for c in options.channels)
    if not channels:
        raise InputError(base, f"no channel chosen; choose among {', '.join(CHANNELS)}")
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise InputError(base, f"unknown ISLES'22 channel {unknown[0]!r}; choose among {', '.join(CHANNELS)}")
    if len(set(channels)) != len(channels):
        raise InputError(base, f"channel chosen twice in --channels {','.join(channels)}")
    if FLAIR in channels and not options.resample_flair:
        raise InputError(base, "FLAIR is on another grid than DWI, ADC and the mask (ISLES'22 ships it unregistered, "
                               "e.g. 512x512x29 at 0.45x0.45x5 mm); pass --resample-flair to resample it onto the "
                               "DWI grid by world coordinates (trilinear, not registration), or leave flair out")
    return channels


def _channel_file(session: _Session, files: list[Path], channel: str) -> Path:
    found = [p for p in files if _channel_of(p.name) == channel]
    if not found:
        raise InputError(session.folder, f"no {channel} file (*_{channel}.nii.gz or .nii, any case) in this "
                                         "session or its subfolders")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(session.folder)) for p in found)
        raise InputError(session.folder, f"{len(found)} files for channel {channel} ({names}); keep one")
    return require_regular(found[0])


def _mask_file(base: Path, session: _Session) -> Path:
    folder = base / DERIVATIVES / session.subject / session.session
    if not folder.is_dir():
        raise InputError(folder, f"lesion mask folder not found (expected a *_msk.nii.gz for "
                                 f"{RAWDATA}/{session.subject}/{session.session})")
    found = sorted(p for p in folder.rglob("*") if _channel_of(p.name) == MASK)
    if not found:
        raise InputError(folder, f"no lesion mask (*_msk.nii.gz or .nii) for {RAWDATA}/{session.subject}/"
                                 f"{session.session}")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise InputError(folder, f"{len(found)} lesion masks ({names}); keep one")
    return require_regular(found[0])


# ---------------------------------------------------------------------------------------- read

def read(root: Path, options) -> Cohort:
    base = _base(Path(root))
    rawdata = base / RAWDATA
    if not rawdata.is_dir():
        raise InputError(rawdata, "folder not found (ISLES'22 layout: rawdata/sub-*/ses-*/ and derivatives/)")
    channels = _chosen_channels(options, base)
    sessions = _sessions(rawdata)
    if not sessions:
        raise InputError(rawdata, "no subjects found (no sub-*/ses-* session folders)")
    per_subject: dict[str, int] = {}
    for session in sessions:
        per_subject[session.subject] = per_subject.get(session.subject, 0) + 1
    subjects = []
    for session in sessions:
        files = _session_files(session.folder)
        paths = tuple((c, _channel_file(session, files, c)) for c in channels)
        # one session: the patient's id; several: each session is its own subject in one group
        sid = session.subject if per_subject[session.subject] == 1 else f"{session.subject}_{session.session}"
        subjects.append(Subject(sid, session.subject, "", paths, _mask_file(base, session)))
    notes = []
    several = sorted(s for s, n in per_subject.items() if n > 1)
    if several:
        notes.append(f"{len(several)} subjects with several sessions: one subject per session "
                     "(<sub>_<ses>), grouped by patient")
    resample = FLAIR in channels
    if resample:
        notes.append(RESAMPLE_NOTE)
    return Cohort(KIND, base, channels, (CHANNEL_KIND,) * len(channels), tuple(sorted(subjects)), VOLUME_PLANES,
                  materialise=materialise if resample else None, notes=tuple(notes))


# --------------------------------------------------------------------------------- materialise

def _grid_reference(subject: Subject) -> Path:
    """The file whose grid the FLAIR goes onto: the DWI; else the ADC or the mask (ISLES'22 puts them on it)."""
    names = dict(subject.channels)
    return names.get("dwi") or names.get("adc") or subject.mask


def materialise(subject: Subject, folder: Path) -> Subject:
    """Write ``subject``'s FLAIR resampled onto the DWI grid as ``folder/<subject>_flair.nii.gz``.

    The file is float32 with the DWI's header and affine. Returns the subject with the flair
    channel pointing at it; the other channels and the mask are unchanged. A module-level
    function, so that stage 01's worker processes can call it.
    """
    names = dict(subject.channels)
    if FLAIR not in names:
        return subject
    out = Path(folder) / f"{subject.subject}{FLAIR_OUT}"
    log.warning("%s: %s", subject.subject, RESAMPLE_NOTE)
    write_resampled(names[FLAIR], _grid_reference(subject), out)
    channels = tuple((name, out if name == FLAIR else path) for name, path in subject.channels)
    return replace(subject, channels=channels)

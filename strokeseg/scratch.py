"""Hidden scratch files and folders that name their owner, and the clean-up of those a killed run left.

Every output is written under a hidden scratch name first and renamed into place when complete
(:mod:`strokeseg.workdir`). A run killed with SIGKILL (or by a power cut) cannot remove its
scratch, so each scratch name carries its owner: this machine's tag and the owning process id,
``.staging-<host>.<pid>-<random>`` for folders and ``.<name>.<host>.<pid>-<random>.tmp<ext>`` for
files. :func:`remove_leftovers` removes the scratch of owners that no longer run on this machine; a
run that is still going (the same stage run twice at once, a server's worker) keeps its own. Scratch
named by another machine (a workdir on a shared file system) is left alone. Names from before owners
were recorded (``.staging-<random>``) have no owner to ask and are removed as leftovers.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import uuid
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

# Folder kinds: a stage's staging and the old outputs it swaps out, the synthetic cohort's.
FOLDER_KINDS = ("staging", "trash", "cohort-staging", "cohort-old")
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_OWNER = r"(?:(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)-)?"
# The random parts are exactly tempfile.mkdtemp's (8 characters) and file_path's (12 hex digits), so
# that a user's own hidden file is never taken for scratch.
_FOLDER = re.compile(rf"^\.(?:{'|'.join(FOLDER_KINDS)})-{_OWNER}[0-9a-z_]{{8}}$")
_FILE = re.compile(rf"^\..+\.{_OWNER}[0-9a-f]{{12}}\.tmp(?:\.[A-Za-z0-9]+)*$")


def owner_tag() -> str:
    """``<host>.<pid>``: who made a scratch name."""
    return f"{_HOST}.{os.getpid()}"


def folder_prefix(kind: str) -> str:
    """The ``tempfile.mkdtemp`` prefix of a scratch folder of ``kind`` made by this process."""
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown scratch folder kind {kind!r}")
    return f".{kind}-{owner_tag()}-"


def file_path(path: Path) -> Path:
    """A fresh scratch path beside ``path`` keeping its extension (``.nii.gz`` whole): writers that
    pick the format by the extension write the right one."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
    return path.with_name(f".{path.name}.{owner_tag()}-{uuid.uuid4().hex[:12]}.tmp{suffix}")


def is_scratch(name: str) -> bool:
    return bool(_FOLDER.match(name) or _FILE.match(name))


def _abandoned(name: str) -> bool:
    match = _FOLDER.match(name) or _FILE.match(name)
    if match is None:
        return False
    if match["pid"] is None:
        return True                     # a name from before owners were recorded
    if match["host"] != _HOST:
        return False                    # another machine's run: it may be alive
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:                     # alive, owned by another user
        return False
    return False


def remove_leftovers(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove the scratch files and folders in ``folder`` (and, with ``recursive``, below it) whose
    owner no longer runs; returns what was removed. A folder that cannot be read is skipped."""
    removed: list[Path] = []
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if _abandoned(entry.name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
            elif recursive and entry.is_dir(follow_symlinks=False) and not is_scratch(entry.name):
                pending.append(path)
    if removed:
        log.info("removed %d leftover(s) of an interrupted earlier run in %s", len(removed), folder)
    return removed

"""Input files are regular files: a folder, FIFO, socket or device named like an image is a fault.

The readers of :mod:`strokeseg.data.readers` (and :mod:`strokeseg.data.cohort`) choose files by
name. A name can belong to something that is not a file: a folder, or a FIFO (named pipe), which
blocks whoever opens it until a writer appears, so stage 01 would hang on it. Every reader therefore
checks each file it chooses with :func:`require_regular` (``os.stat``, which opens nothing) before
anything reads it; a symbolic link to a regular file is a regular file.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from strokeseg.errors import InputError


def irregularity(path: Path) -> str | None:
    """None when ``path`` is a regular file (or a symbolic link to one); otherwise what it is instead:
    ``"not found"``, ``"a broken symbolic link"``, ``"a folder"``, ``"a FIFO"``, ...; nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot be examined ({exc.__class__.__name__}: {exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "an unknown kind of file"


def require_regular(path: Path) -> Path:
    """``path``, when it is a regular file; else an :class:`InputError` naming it: ``file not found``
    or ``not a regular file (a FIFO)`` (a folder, a socket, ...)."""
    what = irregularity(path)
    if what is None:
        return Path(path)
    if what == "not found":
        raise InputError(path, "file not found")
    if what.startswith("cannot"):
        raise InputError(path, what)
    raise InputError(path, f"not a regular file ({what})")

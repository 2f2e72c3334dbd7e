"""What every fault-catalogue case checks: the exit status, one line naming the file or option, nothing
partial left behind, and earlier good outputs unchanged (byte for byte)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from strokeseg.scratch import is_scratch


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` by relative path (symbolic links and FIFOs by their target)."""
    folder = Path(folder)
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path.relative_to(folder))] = "not a regular file"
    return found


def scratch_left(folder: Path) -> list[str]:
    """Hidden scratch files or folders (strokeseg.scratch) anywhere below ``folder``."""
    return sorted(str(Path(root, name).relative_to(folder)) for root, dirs, files in os.walk(folder)
                  for name in dirs + files if is_scratch(name))


def assert_one_line_error(stderr: str, *names: str) -> str:
    """The command's stderr ends in exactly one ``error: ...`` line that names each of ``names`` (a
    path or an option), and holds no traceback; returns that line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]

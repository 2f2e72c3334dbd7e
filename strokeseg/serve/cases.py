"""The cases of a ``strokeseg serve`` process: random ids, one folder each, a fixed set of file names.

Nothing the client sends ever becomes a path: a case id is checked against the shape of the ids
this module makes (``secrets.token_urlsafe``, 128 bits) and looked up in memory, and a file is
served only under one of the names :data:`FILE_NAMES` allows, inside its case's folder. Uploads are
stored as ``scan_<channel>.nii`` or ``.nii.gz`` (the channel names come from the models folder, the
suffix from the file's own first bytes, never from the client's file name). Finished cases are
removed ``retention`` seconds after they finished; every case is removed when the store closes.
"""
from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("queued", "reading", "predicting", "fusing", "writing", "done", "failed")
FINISHED = ("done", "failed")
MASK, TABLE, OVERLAY = "mask.nii.gz", "lesions.csv", "overlay.png"
_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
_GZIP_MAGIC = b"\x1f\x8b"


def scan_name(channel: str, gzipped: bool) -> str:
    return f"scan_{channel}.nii{'.gz' if gzipped else ''}"


def display_name(client_name: str | None) -> str:
    """The client's file name as messages may show it: its last component, printable, at most 80
    characters (it is only ever shown, never used as a path)."""
    name = (client_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:80]
    return name or "upload"


@dataclass
class CaseRecord:
    id: str
    folder: Path
    scans: dict[str, Path]                    # channel -> stored upload
    labels: dict[str, str] = field(default_factory=dict)   # channel -> "t1w (its file name)", for messages
    # channel -> the client's file name (display_name): only read for a BIDS space-MNI entity, which
    # declares the scan's space as the user named it (the stored scan's own name says nothing)
    names: dict[str, str] = field(default_factory=dict)
    status: str = "queued"
    step: str = "queued"
    error: str | None = None
    result: dict | None = None
    finished_at: float | None = None
    created_at: float = field(default_factory=time.monotonic)

    def describe(self, message: str) -> str:
        """A message about the case's files with each stored path replaced by its channel and the
        client's file name: the server's folders never reach the client."""
        for channel, path in self.scans.items():
            message = message.replace(str(path), self.labels.get(channel, channel))
        return message.replace(f"{self.folder}/", "")

    def files(self) -> list[str]:
        """The names this case may serve: its scans, and once done its outputs."""
        names = [path.name for path in self.scans.values()]
        return names + ([MASK, TABLE, OVERLAY] if self.status == "done" else [])


class CaseStore:
    """Case records and folders under one root, safe to use from the web handlers and the worker."""

    def __init__(self, root: Path | None = None, retention_seconds: float = 3600.0):
        self.root = Path(tempfile.mkdtemp(prefix="strokeseg-serve-", dir=root))
        self.retention = float(retention_seconds)
        self._cases: dict[str, CaseRecord] = {}
        self._lock = threading.Lock()

    def create(self, uploads: dict[str, tuple[bytes, str | None]]) -> CaseRecord:
        """A new queued case holding the uploaded channel files (channel -> (content, client file name))."""
        case_id = secrets.token_urlsafe(16)
        folder = self.root / case_id
        folder.mkdir()
        scans, labels, names = {}, {}, {}
        for channel, (content, client_name) in uploads.items():
            path = folder / scan_name(channel, content[:2] == _GZIP_MAGIC)
            path.write_bytes(content)
            scans[channel] = path
            names[channel] = display_name(client_name)
            labels[channel] = f"{channel} ({names[channel]})"
        record = CaseRecord(case_id, folder, scans, labels, names)
        with self._lock:
            self._cases[case_id] = record
        return record

    def get(self, case_id: str) -> CaseRecord | None:
        if not _ID.match(case_id or ""):
            return None
        with self._lock:
            return self._cases.get(case_id)

    def file(self, case_id: str, name: str) -> Path | None:
        """The path of one of the case's servable files, or None (unknown case, name or missing file)."""
        record = self.get(case_id)
        if record is None or name not in record.files():
            return None
        path = record.folder / name
        return path if path.is_file() else None

    def update(self, record: CaseRecord, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(record, key, value)
            if record.status in FINISHED and record.finished_at is None:
                record.finished_at = time.monotonic()

    def snapshot(self, record: CaseRecord) -> dict:
        """The case's public state, read under the lock so status and result agree."""
        with self._lock:
            return {"id": record.id, "status": record.status, "step": record.step, "error": record.error,
                    "result": record.result}

    def expire(self, now: float | None = None) -> int:
        """Remove the cases finished more than ``retention`` seconds ago; how many were removed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [r for r in self._cases.values()
                   if r.finished_at is not None and now - r.finished_at > self.retention]
            for record in old:
                del self._cases[record.id]
        for record in old:
            shutil.rmtree(record.folder, ignore_errors=True)
        return len(old)

    def close(self) -> None:
        with self._lock:
            self._cases.clear()
        shutil.rmtree(self.root, ignore_errors=True)

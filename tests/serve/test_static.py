"""The page's files: the vendored NiiVue is the file its SOURCE.md names (SHA-256) with its licence,
and nothing the page loads points at another host."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "strokeseg" / "serve" / "static"
NIIVUE = STATIC / "vendor" / "niivue"


def test_the_vendored_niivue_matches_its_recorded_checksum_and_keeps_its_licence():
    recorded = re.search(r"SHA-256 of `niivue\.umd\.js` \| `([0-9a-f]{64})`", (NIIVUE / "SOURCE.md").read_text())
    assert recorded, "SOURCE.md must record the SHA-256 of niivue.umd.js"
    assert hashlib.sha256((NIIVUE / "niivue.umd.js").read_bytes()).hexdigest() == recorded.group(1)
    assert "BSD" in (NIIVUE / "LICENSE").read_text() or "Redistribution" in (NIIVUE / "LICENSE").read_text()


def test_the_page_loads_nothing_from_another_host():
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert not re.search(r"(fetch|import)\s*\(\s*[\"'](https?:)?//", text), name
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), name

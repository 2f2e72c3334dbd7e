#!/usr/bin/env python3
"""Stage 03: per-plane slice stores of the 80 % subjects.

Options: `python 03_convert/run.py --help` (same as `strokeseg convert`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("convert", sys.argv[1:], default_workdir=ROOT))

#!/usr/bin/env python3
"""Stage 02: stratified 80/20 subject split.

Options: `python 02_splitting/run.py --help` (same as `strokeseg splitting`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("splitting", sys.argv[1:], default_workdir=ROOT))

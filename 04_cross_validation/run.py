#!/usr/bin/env python3
"""Stage 04: subject-level folds shared by all planes, normal slices, balance tests.

Options: `python 04_cross_validation/run.py --help` (same as `strokeseg cross-validation`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("cross-validation", sys.argv[1:], default_workdir=ROOT))

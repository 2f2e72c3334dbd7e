#!/usr/bin/env python3
"""Stage 08: train the configured model per (plane, fold), evaluate on the test folds, write the fold
tables.

Options: `python 08_training/run.py --help` (same as `strokeseg training`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("training", sys.argv[1:], default_workdir=ROOT))

#!/usr/bin/env python3
"""Stage 01: the cohort (ATLAS v2.0, ISLES'22, nnU-Net raw, PNG or kaggle_3m slice folders, or synthetic),
its grid plan and its lesion statistics.

Options: `python 01_dataset/run.py --help` (same as `strokeseg dataset`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("dataset", sys.argv[1:], default_workdir=ROOT))

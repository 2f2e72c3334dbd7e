#!/usr/bin/env python3
"""Stage 10: tri-planar inference and fusion of every held-out volume with stage 08's models;
per-subject 3-D metrics of each plane and of the fused mask, tables, figures, fused masks and a
ready-to-mount models folder.

Options: `python 10_fusion/run.py --help` (same as `strokeseg fusion`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("fusion", sys.argv[1:], default_workdir=ROOT))

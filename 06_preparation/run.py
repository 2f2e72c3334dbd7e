#!/usr/bin/env python3
"""Stage 06: memory-mapped prepared arrays and the tf.data loader's inputs.

Options: `python 06_preparation/run.py --help` (same as `strokeseg prepare`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("prepare", sys.argv[1:], default_workdir=ROOT))

#!/usr/bin/env python3
"""Stage 07: the model table (parameters, GFLOPs, measured ms per slice, matmul fraction).

Options: `python 07_models/run.py --help` (same as `strokeseg models`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("models", sys.argv[1:], default_workdir=ROOT))

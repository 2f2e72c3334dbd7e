#!/usr/bin/env python3
"""Stage 09: the comparison models and the loss comparison under stage 08's protocol, with tables,
Wilcoxon tests and rainclouds.

Options: `python 09_comparison/run.py --help` (same as `strokeseg comparison`).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout even before `pip install -e .`

from strokeseg.cli import run_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_stage("comparison", sys.argv[1:], default_workdir=ROOT))

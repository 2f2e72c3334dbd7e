#!/usr/bin/env python3
"""Seconds a training run spends on its logs after each epoch (:class:`strokeseg.train.run_logs.RunLogs`:
``progress.png`` and TensorBoard scalars every epoch, prediction overlays after epoch 1 and every
``training.overlay_every`` epochs), against the epoch itself, in one run.

The run is the demo's stage-08 run on a prepared workdir (``--workdir``: stages 01-06 done, e.g. a
``make demo`` workdir): RAX-Net at the demo's width on the axial plane, test fold 1, ``--epochs``
epochs of ``--steps`` steps, trained once with TensorBoard and once without (the progress figure is
drawn either way); the log time is measured around each ``epoch_end`` call.

    python bench/run_logs.py --workdir DIR [--epochs 4] [--steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from strokeseg.config import load_profile  # noqa: E402
from strokeseg.runtime import configure_tensorflow  # noqa: E402

configure_tensorflow(load_profile("demo").onednn)   # before TensorFlow's import: the demo's kernels
import strokeseg.train.loop as loop  # noqa: E402
from strokeseg.train.run_logs import RunLogs  # noqa: E402
from strokeseg.workdir import stage_config  # noqa: E402


def timed_run(workdir: Path, folder: Path, epochs: int, steps: int, tensorboard: bool) -> tuple[list, list]:
    """(seconds of each epoch_end, each epoch's own seconds) of one run."""
    config = stage_config(workdir, "06_preparation")
    demo = load_profile("demo").training
    training = replace(config.training, model="raxnet", model_options=demo.model_options, max_epochs=epochs,
                       steps_per_epoch=steps, validation_steps=steps, overlay_every=2, tensorboard=tensorboard)
    spec = loop.RunSpec(workdir / "06_preparation", "axial", 1, config.cv.n_folds, training, config.seed,
                        config.batches.fixed_order, folder)
    logged, original = [], RunLogs.epoch_end

    def measured(self, model, history):
        start = time.perf_counter()
        original(self, model, history)
        logged.append(time.perf_counter() - start)

    RunLogs.epoch_end = measured
    try:
        loop.train(spec, progress=False)
    finally:
        RunLogs.epoch_end = original
    return logged, list(loop.read_history(folder)["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for tensorboard in (True, False):
            logged, epochs = timed_run(args.workdir, Path(scratch) / str(tensorboard), args.epochs, args.steps,
                                       tensorboard)
            what = "figure, scalars; overlays after epochs 1, 2, 4" if tensorboard else "figure only"
            print(f"tensorboard {'on ' if tensorboard else 'off'}: logs {', '.join(f'{s:.2f}' for s in logged)} s "
                  f"after epochs 1..{len(logged)} ({what}); epochs {statistics.median(epochs):.1f} s (median); "
                  f"logs / epochs {sum(logged) / sum(epochs):.3f}")


if __name__ == "__main__":
    main()

"""One MultiWorkerMirroredStrategy worker of a real training run, launched by tests/train/test_distribute.py
(not a test itself). Usage: TF_CONFIG=... python tests/train/training_worker.py PREPARED_WORKDIR RUN_FOLDER

Trains a 4-filter U-Net with its published recipe (Adam, a per-step schedule) for one short epoch
through strokeseg.train.loop (stage-06 arrays, tf.data, global batches, checkpoints) exactly as stage 08
does; the chief writes RUN_FOLDER, the other worker RUN_FOLDER/.worker-<index>. The loop does not depend
on the model, and tracing a step under MWMS costs per weight tensor: this test took 51 s with RAX-Net,
26 s with this U-Net, on 2 cores.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from strokeseg.train import loop as training  # noqa: E402
from strokeseg.train.recipes import model_training  # noqa: E402
from strokeseg.workdir import stage_config  # noqa: E402


def main(workdir: str, folder: str) -> int:
    training.process_strategy()  # the first TensorFlow work in the process, as MWMS requires
    config = stage_config(Path(workdir), "06_preparation")
    settings = replace(model_training(config, "unet", "published"), max_epochs=1, steps_per_epoch=2,
                       validation_steps=1, augment=True, model_options={"base_filters": 4})
    spec = training.RunSpec(Path(workdir) / "06_preparation", "axial", 1, config.cv.n_folds, settings,
                            config.seed, False, Path(folder))
    training.train(spec, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

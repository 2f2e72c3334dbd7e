#!/usr/bin/env python3
"""Milliseconds per training batch of the intensity augmentation (nnU-Net's set,
:mod:`strokeseg.train.intensity_augmentation`), at the configured probabilities and with every
transform forced on, in one run.

The batch is ``--batch`` axial slices of a synthetic subject (208×240 canvas, the volume_robust
0..255 scale, ``--channels`` adjacent slices per input as prepared for the 2-D models); each batch
gets fresh seed words, as training does. Compare with the seconds of a training step: the demo's
stage 08 trains 3 × 240 steps (README, Results, for its wall time).

    python bench/intensity_augmentation.py [--batch 32] [--channels 1] [--batches 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from strokeseg.config import ConvertConfig, TrainingConfig  # noqa: E402
from strokeseg.data import planes  # noqa: E402
from strokeseg.data.normalization import channel_volume  # noqa: E402
from strokeseg.train.intensity_augmentation import TRANSFORMS, IntensityAugmentation, augment_images  # noqa: E402


def batch_of_slices(batch: int, channels: int) -> np.ndarray:
    """(batch, H, W, channels) float32: consecutive axial slices through the head of subject 0."""
    from strokeseg.data.synthetic import synthesize_subject

    subject = synthesize_subject(2022, 0)
    volume = channel_volume(subject.t1, "t1", ConvertConfig(store_dtype="float32"), subject.affine)
    stack = planes.canvas_for(volume.shape, "axial").pad(planes.to_stack(volume, "axial"))
    middle = len(stack) // 2 - batch // 2
    slices = [stack[middle + b: middle + b + channels] for b in range(batch)]
    return np.stack(slices).transpose(0, 2, 3, 1).astype(np.float32)


def milliseconds(augmentation: IntensityAugmentation, images: np.ndarray, batches: int) -> list[float]:
    times = []
    for step in range(batches + 1):                       # the first one untimed
        start = time.perf_counter()
        augment_images(augmentation, images, (2022, step), groups=1)
        times.append(1000 * (time.perf_counter() - start))
    return times[1:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="slices per batch (default 32, the protocol's)")
    parser.add_argument("--channels", type=int, default=1, help="adjacent slices per input (default 1)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    args = parser.parse_args(argv)
    if min(args.batch, args.channels, args.batches) < 1:
        parser.error("--batch, --channels and --batches must be >= 1")
    images = batch_of_slices(args.batch, args.channels)
    print(f"batch {'x'.join(map(str, images.shape))} float32; median (max) of {args.batches} batches")
    settings = {"configured probabilities": IntensityAugmentation.from_training(TrainingConfig()),
                "every transform on": IntensityAugmentation(**{f"{n}_probability": 1.0 for n in TRANSFORMS})}
    for label, augmentation in settings.items():
        times = milliseconds(augmentation, images, args.batches)
        print(f"{label:<26} {statistics.median(times):8.1f} ms ({max(times):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

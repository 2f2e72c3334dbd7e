#!/usr/bin/env python3
"""Seconds per volume of 3-D sliding-window inference, next to its FLOP floor and the tri-planar figure.

For the ATLAS grid (197×233×189, one channel) and the ISLES'22 grid (112×112×73, two channels)
this builds an untrained 3-D attention U-Net (``--width``; the speed of an untrained model is the
speed of a trained one), counts its forward FLOPs per window with the package's graph counter
(:func:`strokeseg.report.model_table.count_flops`), measures this machine's float32 matmul
throughput, and times :func:`strokeseg.infer.sliding_window.sliding_window_probability` over a random volume:

    floor   = windows × FLOPs per window ÷ matmul FLOP/s   (the arithmetic alone, at GEMM speed)
    measured / floor                                        (target ≤ 1.5)

On the ATLAS grid the same run times the tri-planar path (three untrained full-width RAX-Nets,
``TriPlanarPredictor.probabilities``) for comparison. Peak RSS is the process's ``ru_maxrss``
after each measurement (Linux: KiB; the whole process, TensorFlow included). Model building and
graph tracing are done before the clock starts: the 3-D path makes one untimed pass over the
volume first (a last chunk of fewer windows than the batch is a new input shape, traced on its
first call), so the figure is the per-volume time of a stage or predict run over many volumes.

    python bench/sliding_window.py                      # width 0.25, patch 128x128x128 / 112x112x80
    python bench/sliding_window.py --width 1 --patch-atlas 96 96 96
Targets: ≤ 1.5× the floor, peak RSS ≤ 3 GB on the ATLAS grid.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from strokeseg.infer.sliding_window import sliding_window_probability, window_starts  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def n_windows(shape, patch) -> int:
    return int(np.prod([len(window_starts(s, p)) for s, p in zip(shape, patch)]))


def three_d(label: str, shape, channels: int, patch, width: float, batch: int, matmul: float) -> None:
    from strokeseg.models import attention_unet3d
    from strokeseg.report.model_table import count_flops

    model = attention_unet3d.build((*patch, channels), width=width)
    flops = count_flops(model, (*patch, channels)).total
    predict = model.predict_on_batch
    volume = np.random.default_rng(0).random((channels, *shape)).astype(np.float32)
    volume = volume if channels > 1 else volume[0]
    sliding_window_probability(predict, volume, patch, batch_size=batch)   # tracing of every chunk shape
    start = time.perf_counter()
    sliding_window_probability(predict, volume, patch, batch_size=batch)
    seconds = time.perf_counter() - start
    windows = n_windows(shape, patch)
    floor = windows * flops / matmul
    print(f"{label:<14} 3-D  {'x'.join(map(str, shape))} x{channels}, patch {'x'.join(map(str, patch))}, "
          f"{windows} windows x {flops / 1e9:.1f} GFLOP: {seconds:7.1f} s, floor {floor:6.1f} s, "
          f"{seconds / floor:5.2f}x floor, peak RSS {peak_rss_gb():.2f} GB", flush=True)


def tri_planar(shape, batch: int, matmul: float) -> None:
    from strokeseg.config import PLANES, ConvertConfig
    from strokeseg.data import planes
    from strokeseg.infer.inference import PlanePredictor, ensemble_predict
    from strokeseg.infer.tri_planar import TriPlanarPredictor
    from strokeseg.models import build_model
    from strokeseg.report.model_table import count_flops

    predictors, flops = {}, 0.0
    for plane in PLANES:
        canvas = planes.canvas_for(shape, plane).shape
        model = build_model("raxnet", (*canvas, 1))
        model.predict_on_batch(np.zeros((batch, *canvas, 1), np.float32))
        predictors[plane] = PlanePredictor(ensemble_predict([model], batch), 1)
        flops += planes.n_slices(shape, plane) * count_flops(model, (*canvas, 1)).total
    predictor = TriPlanarPredictor(predictors, ConvertConfig(), batch_size=batch)
    volume = np.random.default_rng(1).integers(1, 1000, shape).astype(np.int16)
    start = time.perf_counter()
    predictor.probabilities(volume)
    seconds = time.perf_counter() - start
    floor = flops / matmul
    print(f"{'ATLAS grid':<14} tri-planar RAX-Net (full width, 3 planes): {seconds:7.1f} s, floor {floor:6.1f} s, "
          f"{seconds / floor:5.2f}x floor, peak RSS {peak_rss_gb():.2f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25, help="attention_unet3d width (default 0.25)")
    parser.add_argument("--patch-atlas", type=int, nargs=3, default=(128, 128, 128))
    parser.add_argument("--patch-isles", type=int, nargs=3, default=(112, 112, 80))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--skip-tri-planar", action="store_true")
    args = parser.parse_args()

    from strokeseg.report.model_table import matmul_gflops
    from strokeseg.runtime import configure_tensorflow

    configure_tensorflow(True)
    matmul = matmul_gflops() * 1e9
    print(f"float32 matmul throughput: {matmul / 1e9:.0f} GFLOP/s; {os.cpu_count()} CPU cores; "
          f"attention_unet3d width {args.width}")
    three_d("ISLES'22 grid", (112, 112, 73), 2, tuple(args.patch_isles), args.width, args.batch_size, matmul)
    three_d("ATLAS grid", (197, 233, 189), 1, tuple(args.patch_atlas), args.width, args.batch_size, matmul)
    if not args.skip_tri_planar:
        tri_planar((197, 233, 189), 8, matmul)


if __name__ == "__main__":
    main()

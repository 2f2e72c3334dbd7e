#!/usr/bin/env python3
"""The GPU check: RAX-Net training throughput (float32 and mixed precision) and tri-planar inference
seconds per volume on Keras' JAX backend, with no TensorFlow in the process.

The GPU machine this project is lent has CUDA, JAX and PyTorch, no TensorFlow and no network, so
everything here is Keras on JAX plus what the repository carries; the package's training loop
(tf.data, tf.distribute) cannot run there. Run through ``bench/gpu_check.sh``, which forces
``KERAS_BACKEND=jax``. Three parts, in one process:

header      keras version, backend, jax version, ``jax.devices()``, and whether it fell back to CPU
            (no GPU visible to JAX, or ``--cpu``: then the figures are not GPU figures).
training    RAX-Net (``--width``; 1.0 is the published network) on the axial canvas of the MNI grid
            (208×240, one channel), compiled as stage 08 compiles it: the published loss
            (``PUBLISHED["raxnet"]`` → ``get_loss``), ``training_metrics()``, and the optimizer from
            ``strokeseg.train.optimizers.build_optimizer`` (AdamW 1e-3, weight decay 0.004,
            ×0.9 per 100k steps). One random batch of ``--batch`` slices with a sparse random mask
            is fed from memory by ``model.train_on_batch`` (no input pipeline: the model's ceiling).
            ``--warmup`` untimed steps absorb the JIT compilation, then ``--steps`` steps are
            timed; ``train_on_batch`` returns the loss as a Python number, which waits for the
            device, so the clock is exact on an asynchronous device. Once in float32, once under
            ``mixed_float16`` (a fresh model; ``compile`` wraps the optimizer in a LossScaleOptimizer):
            slices/s = steps × batch ÷ seconds, and the ratio mixed ÷ float32.
inference   three untrained RAX-Nets (float32, ``--width``), one per plane on its MNI canvas, as
            ``PlanePredictor(ensemble_predict([model], batch), channels=1)`` in a
            ``TriPlanarPredictor(batch_size=batch)``: ``probabilities(volume)`` then ``mask(...)``
            on subject 0 of the synthetic cohort (197×233×189, 619 slices). One warm-up volume,
            timed on its own line: what a user's first volume costs, JAX compiling the step for
            every window shape (at one batch shape: ``ensemble_predict`` pads short chunks); none
            with ``--quick``, whose figure then includes compilation. Then ``--volumes`` timed
            volumes; the median seconds per volume.
            The speed of an untrained model is the speed of a trained one.

If TensorFlow is in ``sys.modules`` at the start or at the end, the check fails (exit 1): it must
prove that it runs without TensorFlow. Besides jax it needs keras, numpy, scipy, nibabel, pandas and
tqdm (what the strokeseg modules used here import); a missing one is named in one line on stderr, with
the import chain that needed it (exit 1). Bad arguments exit 2 with one line on stderr.

    bash bench/gpu_check.sh                       # on the GPU machine: batch 32, 20 steps, 2 volumes
    bash bench/gpu_check.sh --quick --cpu         # smoke run on a CPU (width 0.125, batch 2)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULTS = {"batch": 32, "steps": 20, "warmup": 3, "volumes": 2, "width": 1.0}
QUICK = {"batch": 2, "steps": 1, "warmup": 1, "volumes": 1, "width": 0.125}
SEED = 2022


def fail(message: str, code: int) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # None = not given: --quick's value, else the default (an option given explicitly always wins).
    parser.add_argument("--batch", type=int, help=f"slices per training step and per model call "
                                                  f"(default {DEFAULTS['batch']})")
    parser.add_argument("--steps", type=int, help=f"timed training steps per precision (default {DEFAULTS['steps']})")
    parser.add_argument("--warmup", type=int, help=f"untimed training steps first (default {DEFAULTS['warmup']})")
    parser.add_argument("--volumes", type=int, help=f"timed inference volumes (default {DEFAULTS['volumes']})")
    parser.add_argument("--width", type=float, help="RAX-Net width multiplier in (0, 1] (default 1.0, the "
                                                    "published network; smaller only for a quick run)")
    parser.add_argument("--cpu", action="store_true", help="force CPU (JAX_PLATFORMS=cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = parser.parse_args(argv)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if backend != "jax":
        fail(f"KERAS_BACKEND={backend}: this check runs on the JAX backend only (bench/gpu_check.sh sets it)", 2)
    for name in DEFAULTS:
        if getattr(args, name) is None:
            setattr(args, name, (QUICK if args.quick else DEFAULTS)[name])
    for name in ("batch", "steps", "warmup", "volumes"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be a positive integer, got {getattr(args, name)}", 2)
    if not 0 < args.width <= 1:
        fail(f"--width must be in (0, 1], got {args.width}", 2)
    return args


def missing(error: ImportError) -> str:
    """One line for a package missing on this machine: which, who imported it, which interpreter."""
    chain = [f"{Path(f.filename).relative_to(ROOT)}:{f.lineno}" for f in traceback.extract_tb(error.__traceback__)
             if Path(f.filename).is_relative_to(ROOT)]
    return f"{error} (import chain {' -> '.join(chain)}; python {sys.executable})"


def check_no_tensorflow(when: str) -> None:
    if "tensorflow" in sys.modules:
        fail(f"tensorflow was imported {when}: this check must run without TensorFlow", 1)


def header(args) -> None:
    import jax
    import keras

    if keras.backend.backend() != "jax":
        fail(f"Keras runs on the {keras.backend.backend()} backend, not jax", 2)
    devices = jax.devices()
    gpu = any(d.platform in ("gpu", "cuda", "rocm") for d in devices)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, jax {jax.__version__}, "
          f"devices {devices}, CPU fallback: {'no' if gpu else 'yes'}")
    if not gpu:
        print("no GPU visible to JAX: running on CPU; figures are not GPU figures")
    print(f"settings: width {args.width:g}, batch {args.batch}, warm-up {args.warmup}, steps {args.steps}, "
          f"volumes {args.volumes}")


def training_throughput(args, training, precision: str, shape: tuple[int, int], x, y) -> float:
    """Slices/s of ``train_on_batch`` on one in-memory batch, after ``--warmup`` untimed steps."""
    import keras

    from strokeseg.models import build_model
    from strokeseg.train.losses import get_loss
    from strokeseg.train.metrics import training_metrics
    from strokeseg.train.optimizers import build_optimizer

    keras.backend.clear_session()             # the previous precision's model and compiled steps
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(SEED)
    model = build_model("raxnet", shape + (1,), width=args.width)
    model.compile(optimizer=build_optimizer(training, steps_per_epoch=1),
                  loss=get_loss(training.loss, **training.loss_options), metrics=training_metrics())
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(x, y)       # a Python number: waits for the device
    seconds = time.perf_counter() - start
    loss = loss[0] if isinstance(loss, list) else loss
    rate = args.steps * args.batch / seconds
    print(f"train {precision}: {rate:.2f} slices/s ({args.steps} steps of {args.batch} slices on "
          f"{shape[0]}x{shape[1]}x1 in {seconds:.3f} s, {model.count_params()} parameters, "
          f"optimizer {type(model.optimizer).__name__}, last loss {float(loss):.4f})")
    return rate


def inference_seconds(args) -> float:
    """Median seconds per volume of ``TriPlanarPredictor.probabilities`` + ``.mask``, after a warm-up volume
    (except with ``--quick``)."""
    import keras

    from strokeseg.config import PLANES
    from strokeseg.data.planes import canvas_for
    from strokeseg.data.resample import MNI_SHAPE
    from strokeseg.data.synthetic import synthesize_subject
    from strokeseg.infer.inference import PlanePredictor, ensemble_predict
    from strokeseg.infer.tri_planar import TriPlanarPredictor
    from strokeseg.models import build_model

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")   # saved inference models are float32
    keras.utils.set_random_seed(SEED)
    predictors = {}
    for plane in PLANES:
        model = build_model("raxnet", canvas_for(MNI_SHAPE, plane).shape + (1,), width=args.width)
        predictors[plane] = PlanePredictor(ensemble_predict([model], args.batch), channels=1)
    predictor = TriPlanarPredictor(predictors, batch_size=args.batch)
    subject = synthesize_subject(SEED, 0)
    volume, affine = subject.t1, subject.affine     # the affine: normalised as on the MNI grid, as predict does
    if not args.quick:   # a smoke run times compilation too: its figure only shows the path works
        start = time.perf_counter()
        predictor.mask(predictor.probabilities(volume, affine))     # warm-up: compiles every window shape
        print(f"inference first volume: {time.perf_counter() - start:.3f} s (compilation included)")
    times = []
    for _ in range(args.volumes):
        start = time.perf_counter()
        predictor.mask(predictor.probabilities(volume, affine))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"inference: {median:.3f} s per volume (median of {len(times)}: "
          f"{', '.join(f'{t:.3f}' for t in times)}; {'x'.join(map(str, volume.shape))}, "
          f"{sum(volume.shape)} slices, batch {args.batch}{', compilation included' if args.quick else ''})")
    return median


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)   # line by line: a run killed at the limit still shows its figures
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"   # read when jax initialises its backends
    check_no_tensorflow("before the check started")
    header(args)

    import numpy as np

    from strokeseg.config import TrainingConfig
    from strokeseg.data.planes import canvas_for
    from strokeseg.data.resample import MNI_SHAPE
    from strokeseg.train.recipes import PUBLISHED

    training = TrainingConfig(**PUBLISHED["raxnet"])   # RAX-Net's published loss and optimizer
    shape = canvas_for(MNI_SHAPE, "axial").shape
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((args.batch, *shape, 1)).astype(np.float32)
    y = (rng.random((args.batch, *shape, 1)) < 0.02).astype(np.float32)   # ~2 % lesion, as sparse as lesions
    print(f"recipe: loss {training.loss}, metrics training_metrics(), optimizer strokeseg.train.optimizers."
          f"build_optimizer: {training.optimizer} lr {training.learning_rate:g}, weight decay "
          f"{training.weight_decay:g}, {training.schedule} x{training.decay_rate:g} per {training.decay_steps} steps")
    rates = {precision: training_throughput(args, training, precision, shape, x, y)
             for precision in ("float32", "mixed_float16")}
    print(f"train mixed/float32: {rates['mixed_float16'] / rates['float32']:.2f}")
    inference_seconds(args)
    check_no_tensorflow("during the check")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as error:   # on a machine that lacks a package: say which in one line, not a traceback
        fail(missing(error), 1)

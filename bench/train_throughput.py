#!/usr/bin/env python3
"""RAX-Net training throughput (slices/s): the real stage-06 input pipeline against its ceiling.

What it measures, in one run and one process, for one (plane, test fold) of a workdir whose
stage 06 is published:

(a) pipeline  ``model.fit`` fed exactly as ``strokeseg.train.loop.train`` feeds it: the training
              role's prepared batches (``PreparedSplit(..., "train", ...)``) through
              ``strokeseg.train.input_pipeline.batch_dataset`` (memory-map reads in ``numpy_function``,
              float32 conversion, augmentation when the config turns it on, prefetch) and
              ``distribute.global_batches``; RAX-Net built, compiled and optimised as training
              does it (``tversky_plus_focal`` loss, ``training_metrics()``, AdamW from
              ``build_optimizer``, the precision policy, the distribution strategy);
(b) constant  the same model fed one real batch of the same shape repeated from memory
              (``tf.data.Dataset.from_tensors(batch).repeat(steps)``): no input cost at all, the
              ceiling for this model on this machine.

Each measurement is one ``model.fit`` epoch of ``--steps`` optimizer steps. After an untimed
warm-up (one fit of each kind, which absorbs tracing and one-time kernel set-up) the two are
interleaved a, b, b, a, ... (the order alternates, so neither always runs first), then the
machine's float32 matmul throughput is re-measured (``strokeseg.report.model_table.matmul_gflops``, the
figure stage 07 uses), once per repeat; medians are reported, and every repeat's figures too.

How to read the figures
    slices/s     "steady" = slices of steps 2..n ÷ seconds from the end of step 1 to the end of
                 step n (start-up and the first fetch excluded). The step clock is a callback
                 whose ``on_train_batch_end`` makes Keras convert the step's logs to Python
                 numbers, which waits for the device, so it is exact on asynchronous devices too.
                 "whole" = all slices ÷ the whole ``fit`` call, dataset construction, first fetch
                 and end-of-fit delay included (what a --steps-long epoch pays). Ratios and FLOP
                 fractions use "steady".
    tail         seconds from the last step's end until ``fit`` returns: a per-epoch cost (each
                 training epoch is one ``fit`` call), reported apart so that it does not distort
                 the per-step figures of a short measurement.
    a/b          median(a) ÷ median(b), and the median of the per-repeat ratios. The target is
                 a/b ≥ 0.9: the input pipeline may cost at most 10 % of the ceiling.
    FLOP/s       training FLOPs per slice ≈ 3 × forward FLOPs. Forward FLOPs come from
                 ``model_report.count_flops`` (the traced forward graph, multiply-add = 2 FLOPs,
                 activations not counted); the backward pass is taken as 2 × forward (gradients
                 with respect to activations and to weights), so 3 × forward per step and slice.
                 Loss, metrics and the optimizer update are not counted. The fraction is achieved
                 FLOP/s ÷ the median float32 N×N matmul FLOP/s (nominal FLOPs: Winograd-type
                 convolution algorithms can exceed 1).

Backends: on TensorFlow everything above holds. On JAX or torch (no TensorFlow installed),
(a) is a Python generator reading ``PreparedSplit.batch(i)`` in the epoch's batch order and
converting to float32 in a background thread (a small queue as prefetch), (b) the same constant
batch placed on the device once and yielded ``--steps`` times; both go through ``model.fit``.
That path has no augmentation, no distribution strategy, and takes forward FLOPs from the
workdir's stage-07 table (``07_models/models.csv``) when there is one.

    python bench/train_throughput.py --workdir /tmp/demo_run --steps 4 --repeats 3
    python bench/train_throughput.py --workdir W --steps 50 --compare-precision   # on a GPU
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import queue
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # figures only, not TensorFlow's start-up chatter

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402

from strokeseg.config import PLANES, PRECISIONS, Config, TrainingConfig, derive_seed  # noqa: E402
from strokeseg.contracts import MANIFEST_JSON, MODELS, MODELS_TABLE_CSV, PREPARATION  # noqa: E402
from strokeseg.data.prepared import PreparedSplit  # noqa: E402
from strokeseg.errors import StrokesegError  # noqa: E402
from strokeseg.train.distribute import precision_policy, set_precision  # noqa: E402  (TF-free)
from strokeseg.workdir import stage_config, stage_dir  # noqa: E402

MODEL = "raxnet"
TRAIN_FLOPS_PER_FORWARD = 3          # forward + backward (≈ 2 × forward)
MATMUL_SIZE = 2048                   # as stage 07 (model_report.ReportOptions.matmul_size)
TARGET_RATIO = 0.9


def is_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


# Options ------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="RAX-Net training throughput: the stage-06 input pipeline (a) against constant "
                    "in-memory batches (b), interleaved; medians, a/b and the matmul fraction.")
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="workdir holding a published 06_preparation (default: the repository root)")
    parser.add_argument("--plane", choices=PLANES, default="axial")
    parser.add_argument("--fold", type=int, default=1, help="test fold held out (default 1)")
    parser.add_argument("--steps", type=int, default=6,
                        help="optimizer steps per measurement, >= 2 (default 6; use ~50 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved a, b repeats (default 3)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="steps of the untimed warm-up fit of each kind (default 1)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per replica and step (default: the prepared batch, 32). The "
                             "pipeline yields whole prepared batches; another size re-batches them "
                             "(unbatch + batch), which the training loop does not do")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="dtype policy; auto = float32 on CPU, mixed_float16 on GPU (as training.precision)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="measure float32 and the mixed policy (--precision if mixed, else "
                             "mixed_float16) in the same run and print the speed-up (for GPUs)")
    args = parser.parse_args(argv)
    for name, low in (("steps", 2), ("repeats", 1), ("warmup_steps", 1), ("batch_size", 1), ("fold", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    return args


def policies(args) -> list[str]:
    resolved = precision_policy(args.precision)
    if not args.compare_precision:
        return [resolved]
    return ["float32", resolved if resolved != "float32" else "mixed_float16"]


# Inputs -------------------------------------------------------------------------------------------
@dataclass
class Setup:
    workdir: Path
    config: Config
    training: TrainingConfig
    split: PreparedSplit
    plane: str
    fold: int
    batch_size: int          # per replica and step
    replicas: int
    steps: int
    strategy: object = None

    @property
    def prepared_batch(self) -> int:
        return int(self.split.batch_shape[0][0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.split.batch_shape[0][1:])

    @property
    def slices_per_step(self) -> int:
        return self.batch_size * self.replicas

    @property
    def data_seed(self) -> int:   # RunSpec.data_seed
        return derive_seed(self.config.seed, "train", self.plane, self.fold)

    def prepared_batches(self, steps: int) -> int:
        """Prepared batches one measurement of ``steps`` steps reads."""
        return math.ceil(steps * self.slices_per_step / self.prepared_batch)


def open_workdir(args) -> Setup:
    """The stage-06 config and arrays, or a one-line StrokesegError naming what is missing."""
    from strokeseg.train.recipes import model_training

    prepared = stage_dir(args.workdir, PREPARATION)
    if not prepared.is_dir():
        raise StrokesegError(f"{prepared}: no such folder; --workdir must hold a published 06_preparation")
    if not (prepared / MANIFEST_JSON).is_file():
        raise StrokesegError(f"{prepared}: not published (no {MANIFEST_JSON}); run 06_preparation/run.py "
                             f"--workdir {args.workdir} first")
    config = stage_config(args.workdir, PREPARATION)
    training = model_training(config, MODEL, "raxnet")   # stage 08's training section, model RAX-Net
    split = PreparedSplit(prepared, args.plane, args.fold, "train", config.cv.n_folds, channels=1)
    setup = Setup(args.workdir, config, training, split, args.plane, args.fold, 0, 1, args.steps)
    setup.batch_size = args.batch_size or setup.prepared_batch
    return setup


def check_steps(setup: Setup, warmup_steps: int) -> None:
    need = setup.prepared_batches(max(setup.steps, warmup_steps))
    if need > setup.split.n_batches:
        raise StrokesegError(f"--steps {setup.steps} needs {need} prepared batches per measurement but "
                             f"{setup.plane} fold {setup.fold} train has {setup.split.n_batches}")


def constant_batch(setup: Setup) -> tuple[np.ndarray, np.ndarray]:
    """One real batch as float32, tiled or cut to the global step's size."""
    x, y = setup.split.batch(0)
    n = setup.slices_per_step
    index = np.resize(np.arange(len(x)), n)
    return x[index].astype(np.float32), y[index].astype(np.float32)


@dataclass
class Feeds:
    """``pipeline(epoch, steps)`` and ``constant(steps)`` give what ``model.fit`` is fed."""
    pipeline: Callable[[int, int], object]
    constant: Callable[[int], object]
    description: str


def tf_feeds(setup: Setup) -> Feeds:
    """(a) batch_dataset + global_batches as strokeseg.train.loop.train; (b) from_tensors().repeat()."""
    import tensorflow as tf

    from strokeseg.train.augmentation import Augmentation
    from strokeseg.train.distribute import global_batches
    from strokeseg.train.input_pipeline import PARALLEL_READS, PREFETCH, batch_dataset

    training = setup.training
    augment = Augmentation.from_training(setup.plane, training) if training.augment else None
    fixed = setup.config.batches.fixed_order
    rebatch = setup.batch_size != setup.prepared_batch

    def pipeline(epoch: int, steps: int):
        if not rebatch:
            data = batch_dataset(setup.split, epoch, setup.data_seed, fixed, steps, setup.replicas, augment)
        else:
            data = batch_dataset(setup.split, epoch, setup.data_seed, fixed, setup.prepared_batches(steps), 1,
                                 augment)
            data = data.unbatch().batch(setup.batch_size, drop_remainder=True).take(steps * setup.replicas)
        return global_batches(data, setup.replicas)

    x, y = constant_batch(setup)
    x, y = tf.constant(x), tf.constant(y)

    def constant(steps: int):
        return tf.data.Dataset.from_tensors((x, y)).repeat(steps)

    text = ("tf.data: batch_dataset (numpy_function reads, float32 cast, "
            + ("augmentation, " if augment else "no augmentation, ")
            + f"{PARALLEL_READS} parallel reads, prefetch {PREFETCH}, autotune off)"
            + (f", re-batched to {setup.batch_size}" if rebatch else ""))
    return Feeds(pipeline, constant, text)


def generator_feeds(setup: Setup, depth: int = 2) -> Feeds:
    """Non-TensorFlow backends: (a) a background-thread generator over the memory maps in the
    epoch's batch order (strokeseg.protocol.batches.epoch_batch_order, as pipeline.epoch_indices);
    (b) one device-resident batch yielded ``steps`` times."""
    from strokeseg.protocol.batches import epoch_batch_order

    split, size = setup.split, setup.batch_size

    def batches(epoch: int, steps: int):
        order = epoch_batch_order(split.n_batches, epoch, setup.data_seed, setup.config.batches.fixed_order)
        pending_x, pending_y, made = [], [], 0
        for index in order[:setup.prepared_batches(steps)]:
            x, y = split.batch(int(index))
            pending_x.append(x.astype(np.float32))
            pending_y.append(y.astype(np.float32))
            if sum(len(p) for p in pending_x) < size:
                continue
            x, y = np.concatenate(pending_x), np.concatenate(pending_y)
            while len(x) >= size and made < steps:
                yield x[:size], y[:size]
                x, y, made = x[size:], y[size:], made + 1
            pending_x, pending_y = [x], [y]

    def pipeline(epoch: int, steps: int):
        return prefetched(batches(epoch, steps), depth)

    x, y = (keras.ops.convert_to_tensor(a) for a in constant_batch(setup))

    def constant(steps: int):
        return ((x, y) for _ in range(steps))

    return Feeds(pipeline, constant, f"Python generator over the memory maps, float32 in a thread, queue of {depth}")


def prefetched(items, depth: int):
    """Iterate ``items`` in a daemon thread, at most ``depth`` ahead of the consumer."""
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)

    def produce():
        try:
            for item in items:
                buffer.put(item)
        finally:
            buffer.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        yield item


# Model --------------------------------------------------------------------------------------------
def build_tf_model(setup: Setup, policy: str) -> keras.Model:
    """As strokeseg.train.loop.train: precision, strategy scope, loss, build_training_model, compile, build."""
    from strokeseg.train.distribute import strategy_scope
    from strokeseg.train.loop import build_training_model
    from strokeseg.train.losses import get_loss
    from strokeseg.train.metrics import training_metrics
    from strokeseg.train.optimizers import build_optimizer

    training = setup.training
    set_precision(policy)
    keras.utils.set_random_seed(derive_seed(setup.config.seed, "init", setup.plane, setup.fold))
    with strategy_scope(setup.strategy):
        loss = get_loss(training.loss, **training.loss_options)
        model = build_training_model(training, setup.input_shape, loss)
        model.compile(optimizer=build_optimizer(training, setup.split.n_batches), loss=loss,
                      metrics=training_metrics())
        model.optimizer.build(model.trainable_variables)
    return model


def build_generic_model(setup: Setup, policy: str) -> keras.Model:
    """Without TensorFlow (strokeseg.train.loop imports it): the same model, loss, metrics and
    optimizer, built from the TF-free modules."""
    from strokeseg.models import build_model
    from strokeseg.train.losses import get_loss
    from strokeseg.train.metrics import training_metrics
    from strokeseg.train.optimizers import build_optimizer

    training = setup.training
    set_precision(policy)
    keras.utils.set_random_seed(derive_seed(setup.config.seed, "init", setup.plane, setup.fold))
    model = build_model(training.model, setup.input_shape, **training.model_options)
    model.compile(optimizer=build_optimizer(training, setup.split.n_batches),
                  loss=get_loss(training.loss, **training.loss_options), metrics=training_metrics())
    model.optimizer.build(model.trainable_variables)
    return model


# FLOPs and matmul ---------------------------------------------------------------------------------
def forward_gflops(setup: Setup, model: keras.Model) -> tuple[float | None, str]:
    """Forward GFLOPs per slice and where they come from."""
    if is_tensorflow():
        from strokeseg.report.model_table import count_flops

        flops = count_flops(model, setup.input_shape)
        return flops.gflops, f"model_report.count_flops, not counted: {flops.uncounted_ops or 'none'}"
    table = stage_dir(setup.workdir, MODELS) / MODELS_TABLE_CSV
    if table.is_file():
        import pandas as pd

        rows = pd.read_csv(table)
        rows = rows[(rows["model"] == MODEL) & (rows["plane"] == setup.plane) & (rows["status"] == "ok")]
        if len(rows):
            return float(rows["forward_gflops_per_slice"].iloc[0]), f"{table} (model_report.count_flops)"
    return None, "unavailable (needs TensorFlow or a published 07_models table)"


def matmul_gflops() -> float:
    """float32 N×N GEMM GFLOP/s: model_report.matmul_gflops on TensorFlow (it compiles with
    tf.function), a jax.jit equivalent on JAX, nothing elsewhere."""
    if is_tensorflow():
        from strokeseg.report.model_table import matmul_gflops as measure

        return measure(MATMUL_SIZE, repeats=3, warmup=1)
    if keras.backend.backend() != "jax":
        return float("nan")
    import jax

    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((MATMUL_SIZE,) * 2, dtype=np.float32)) for _ in range(2))
    product = jax.jit(lambda p, q: (p @ q).sum())
    product(a, b).block_until_ready()
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(20):
            result = product(a, b)
        result.block_until_ready()
        samples.append(time.perf_counter() - start)
    return 2.0 * MATMUL_SIZE ** 3 * 20 / statistics.median(samples) / 1e9


# Timing -------------------------------------------------------------------------------------------
class StepClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


@dataclass
class Rate:
    steady: float      # slices/s over steps 2..n
    whole: float       # slices/s over the whole fit call
    tail: float        # seconds from the end of the last step to the return of fit


def timed_fit(model: keras.Model, make_data: Callable[[], object], steps: int, slices_per_step: int) -> Rate:
    clock = StepClock()
    start = time.perf_counter()
    model.fit(make_data(), epochs=1, shuffle=False, callbacks=[clock], verbose=0)
    end = time.perf_counter()
    if len(clock.ends) != steps:
        raise StrokesegError(f"fit ran {len(clock.ends)} steps, expected {steps}")
    return Rate((steps - 1) * slices_per_step / (clock.ends[-1] - clock.ends[0]),
                steps * slices_per_step / (end - start), end - clock.ends[-1])


@dataclass
class Arm:
    """One precision policy: its model and its figures."""
    policy: str
    model: keras.Model
    pipeline: list[Rate] = field(default_factory=list)
    constant: list[Rate] = field(default_factory=list)

    def use(self) -> None:
        keras.mixed_precision.set_global_policy(self.policy)


def warm_up(arm: Arm, feeds: Feeds, setup: Setup, steps: int) -> tuple[float, float]:
    arm.use()
    start = time.perf_counter()
    arm.model.fit(feeds.pipeline(0, steps), epochs=1, shuffle=False, verbose=0)
    middle = time.perf_counter()
    arm.model.fit(feeds.constant(steps), epochs=1, shuffle=False, verbose=0)
    return middle - start, time.perf_counter() - middle


def measure(arms: list[Arm], feeds: Feeds, setup: Setup, repeats: int, gflops: float | None) -> list[float]:
    """Interleaved a, b per arm, then matmul, per repeat; prints each repeat's row."""
    matmul = []
    print(f"\n{'repeat':>6}  {'policy':<15}{'order':<6}{'(a) steady':>11}{'whole':>7}{'tail s':>7}"
          f"{'(b) steady':>11}{'whole':>7}{'tail s':>7}{'a/b':>7}{'matmul GF/s':>12}{'frac(a)':>8}{'frac(b)':>8}")
    for r in range(1, repeats + 1):
        order = ("pipeline", "constant") if r % 2 else ("constant", "pipeline")
        for arm in arms:
            arm.use()
            for kind in order:
                make = (lambda r=r: feeds.pipeline(r, setup.steps)) if kind == "pipeline" else \
                       (lambda: feeds.constant(setup.steps))
                getattr(arm, kind).append(timed_fit(arm.model, make, setup.steps, setup.slices_per_step))
        matmul.append(matmul_gflops())
        for arm in arms:
            a, b = arm.pipeline[-1], arm.constant[-1]
            print(f"{r:>6}  {arm.policy:<15}{'ab' if r % 2 else 'ba':<6}{a.steady:>11.2f}{a.whole:>7.2f}{a.tail:>7.2f}"
                  f"{b.steady:>11.2f}{b.whole:>7.2f}{b.tail:>7.2f}{a.steady / b.steady:>7.3f}{matmul[-1]:>12.1f}"
                  f"{fraction(a.steady, gflops, matmul[-1]):>8}{fraction(b.steady, gflops, matmul[-1]):>8}",
                  flush=True)
    return matmul


def fraction(rate: float, gflops: float | None, matmul: float) -> str:
    if gflops is None or not math.isfinite(matmul):
        return "n/a"
    return f"{TRAIN_FLOPS_PER_FORWARD * gflops * rate / matmul:.3f}"


# Report -------------------------------------------------------------------------------------------
def machine_facts() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"machine   {platform.node()}: {os.cpu_count()} CPUs ({cores} usable), load average {load}")
    versions = f"Keras {keras.__version__}, backend {keras.backend.backend()}"
    if is_tensorflow():
        import tensorflow as tf

        from strokeseg.report.model_table import device_description

        devices = ", ".join(d.name.replace("/physical_device:", "") for d in tf.config.list_physical_devices())
        threads = (f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}, "
                   f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'}")
        print(f"          {device_description()}; TensorFlow {tf.__version__}, {versions}")
        print(f"          devices: {devices}; TF threads: {threads}")
    elif keras.backend.backend() == "jax":
        import jax

        print(f"          JAX {jax.__version__}, {versions}; devices: {', '.join(str(d) for d in jax.devices())}")
    else:
        print(f"          {versions}")


def run_facts(setup: Setup, feeds: Feeds, arms: list[Arm], args) -> None:
    image_shape, _ = setup.split.batch_shape
    t = setup.training
    print(f"data      {setup.workdir / '06_preparation'}: {setup.plane}, test fold {setup.fold}, role train: "
          f"{setup.split.n_batches} prepared batches of {'x'.join(map(str, image_shape))} {setup.split.dtype}")
    print(f"          (a) {feeds.description}")
    print("          (b) one real batch, float32, repeated from memory")
    model = arms[0].model
    print(f"model     {MODEL}: {model.count_params():,} parameters; loss {t.loss}, optimizer {t.optimizer} "
          f"(lr {t.learning_rate:g}, schedule {t.schedule}), metrics dice/precision/recall; "
          f"jit_compile {getattr(model, 'jit_compile', 'n/a')}; policies {', '.join(a.policy for a in arms)}")
    print(f"steps     {setup.steps} per measurement × {setup.slices_per_step} slices "
          f"({setup.batch_size} × {setup.replicas} replica(s)); {args.repeats} repeats; "
          f"warm-up {args.warmup_steps} step(s) of each")


def summary(arms: list[Arm], matmul: list[float], gflops: float | None, source: str) -> None:
    mm = statistics.median(matmul)
    print("\nmedians (slices/s, steady)")
    if gflops is not None:
        print(f"  FLOPs: forward {gflops:.3f} GFLOP/slice ({source}); training ≈ {TRAIN_FLOPS_PER_FORWARD} × forward"
              f" = {TRAIN_FLOPS_PER_FORWARD * gflops:.2f} GFLOP/slice (backward ≈ 2 × forward; loss, metrics and"
              " optimizer update not counted)")
    else:
        print(f"  FLOPs: {source}")
    each = ", ".join(f"{m:.1f}" for m in matmul)
    print(f"  matmul float32 {MATMUL_SIZE}×{MATMUL_SIZE}: {mm:.1f} GFLOP/s (median of {each})")
    for arm in arms:
        a = statistics.median(r.steady for r in arm.pipeline)
        b = statistics.median(r.steady for r in arm.constant)
        ratios = [x.steady / y.steady for x, y in zip(arm.pipeline, arm.constant)]
        paired = statistics.median(ratios)
        verdict = "meets" if a / b >= TARGET_RATIO else "BELOW"
        if min(ratios) < TARGET_RATIO <= max(ratios):
            verdict = f"inconclusive: repeats range {min(ratios):.2f}-{max(ratios):.2f} around"
        print(f"  [{arm.policy}]")
        for name, rates, rate in (("(a) pipeline", arm.pipeline, a), ("(b) constant", arm.constant, b)):
            tails = [r.tail for r in rates]
            print(f"    {name}  {rate:8.2f} slices/s   (whole fit {statistics.median(r.whole for r in rates):.2f}; "
                  f"end-of-fit tail median {statistics.median(tails):.2f} s, max {max(tails):.2f} s, per epoch)")
        print(f"    a/b           {a / b:8.3f}  (median of per-repeat ratios {paired:.3f}; {verdict} the "
              f"{TARGET_RATIO} target)")
        best_a, best_b = max(r.steady for r in arm.pipeline), max(r.steady for r in arm.constant)
        print(f"    best repeats  (a) {best_a:.2f}, (b) {best_b:.2f} slices/s, a/b {best_a / best_b:.3f} "
              "(load only slows a run down, so the best is the least disturbed)")
        if gflops is not None and math.isfinite(mm):
            for name, rate in (("(a)", a), ("(b)", b)):
                achieved = TRAIN_FLOPS_PER_FORWARD * gflops * rate
                print(f"    achieved {name}  {achieved:8.1f} GFLOP/s = {achieved / mm:.3f} × matmul")
    if len(arms) == 2:
        for kind in ("pipeline", "constant"):
            slow, fast = (statistics.median(r.steady for r in getattr(arm, kind)) for arm in arms)
            print(f"  speed-up {arms[1].policy} / {arms[0].policy}, {kind}: {fast / slow:.2f}×")


# Main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        setup = open_workdir(args)
        if is_tensorflow():
            from strokeseg.train.loop import process_strategy

            setup.strategy = process_strategy()
            setup.replicas = setup.strategy.num_replicas_in_sync
            feeds = tf_feeds(setup)
        else:
            feeds = generator_feeds(setup)
        check_steps(setup, args.warmup_steps)
    except StrokesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    machine_facts()
    build = build_tf_model if is_tensorflow() else build_generic_model
    arms = [Arm(policy, build(setup, policy)) for policy in policies(args)]
    run_facts(setup, feeds, arms, args)
    arms[0].use()
    gflops, source = forward_gflops(setup, arms[0].model)

    for arm in arms:
        a, b = warm_up(arm, feeds, setup, args.warmup_steps)
        print(f"warm-up   [{arm.policy}] pipeline {a:.1f} s, constant {b:.1f} s (tracing included, untimed)",
              flush=True)
    matmul = measure(arms, feeds, setup, args.repeats, gflops)
    summary(arms, matmul, gflops, source)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\nload average at the end: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

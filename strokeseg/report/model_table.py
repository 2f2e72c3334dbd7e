"""The model table (stage 07): size, cost and measured speed of every registered model, per plane.

For each (model, plane) the table gives the input the model gets on that plane's canvas, its
parameter count, its forward FLOPs per slice, and on this machine its measured forward and
train-step time per slice and the fraction of the machine's measured matmul throughput its
forward pass achieves.

Volume models
    A 3-D model (:data:`strokeseg.models.VOLUME_MODELS`) gets one row, plane ``volume``, whatever
    the planes: built with its default options (as the slice models are) for the patch its runs
    train on (:func:`strokeseg.train.volume_data.run_patch` on stage 01's grid plan, with the
    plan's channel count M; without a published stage 01, on the ATLAS grid with M = 1). Its
    input is (``input_h``, ``input_w``, ``input_d``, ``input_c``) in the model's axis order (the
    patch's x, y, z, then M), its canvas (``canvas_h``, ``canvas_w``, ``canvas_d``) the grid the
    patch is cut from, and ``input_padded`` says the patch exceeds the grid on some axis (the
    sampler zero-pads). Its costs are per **patch**, in their own columns
    (``forward_gflops_per_patch``, ``forward_ms_per_patch``, ``train_step_ms_per_patch``); the
    per-slice columns stay empty on a volume row and the per-patch ones, ``canvas_d`` and
    ``input_d`` on slice rows, so no column mixes units. A volume row is timed one patch per call
    (``batch_size`` 1) with the options' warm-up and repeats, because a full-width 3-D model is
    costly on a CPU: unet3d on the ATLAS default patch (128³, M = 1) is 90 M parameters and
    3.8 TFLOPs per forward pass, measured on two shared CPU cores at 30-40 s per forward pass and
    1-2 min and 14 GB per train step (attention_unet3d about 17 GB), so 10-20 min per 3-D model
    with the default 2 + 5 calls of each. When the kernel kills a model's measuring process for
    memory, its rows are ``failed`` and the other models' rows are still written (not with
    ``isolate`` off, as in :meth:`ReportOptions.quick`, where the one process dies).

FLOP convention
    Forward FLOPs are counted on the traced TensorFlow forward graph of one slice
    (``tf.function(model).get_concrete_function(TensorSpec((1, H, W, C)))``, inference mode), or of
    one patch (``(1, x, y, z, M)``) for a 3-D model, op by op, with the per-op statistics TensorFlow
    registers for ``tf.compat.v1.profiler``'s ``float_operation`` view. So a multiply-add counts as
    **2 FLOPs** (Conv2D: 2·kh·kw·C_in per output element, Conv3D: 2·kd·kh·kw·C_in; MatMul: 2·K per
    output element) and elementwise arithmetic (bias and residual adds, batch-norm's multiply and
    add) counts 1 per output element. Unlike the profiler, the walk goes into function calls and
    multiplies a ``while`` loop's body by its static trip count (Keras runs ConvLSTM2D as a loop),
    skips ops the outputs do not depend on and ops with integer or boolean outputs (loop counters,
    shape arithmetic, comparisons), counts ``Einsum`` as 2 FLOPs per point of its index space, and
    counts the 3-D transposed convolution (``Conv3DBackpropInputV2``, which TensorFlow registers no
    count for) by the formula TensorFlow registers for the 2-D one. Ops with arithmetic but no
    registered count (activations such as Relu and Sigmoid, bilinear resizing, 3-D pooling, ...)
    are not counted; their types are listed in the ``uncounted_ops`` column (and their output sizes
    in the summaries), so that nothing is left out silently. On a loop-free graph without 3-D
    transposed convolutions the total equals the profiler's (tests/report/test_model_table.py
    checks both this and hand counts).

Timing
    A batch of ``batch_size`` random slices (one patch for a 3-D model), ``warmup`` untimed calls
    (tracing, XLA compilation), then the median of ``repeats`` timed calls divided by the batch
    size. Forward is ``model.predict_on_batch``; a train step is one ``model.train_on_batch`` with
    binary cross-entropy and Adam; both go through the compiled step functions Keras uses for
    training (``jit_compile`` as given to ``model.compile``; "auto" is Keras's default: XLA on GPU,
    not on CPU). The machine's matmul throughput is float32 ``keras.ops.matmul`` of two N×N
    matrices (2·N³ FLOPs) in a compiled function, median of ``repeats`` timed groups of calls,
    measured again just before each model. ``matmul_fraction`` = forward FLOP/s ÷ matmul FLOP/s,
    with the nominal FLOPs above: convolution algorithms that do fewer multiplications (Winograd,
    FFT) can put it above 1. Timings vary run to run (and with other load on a shared machine);
    everything else in the table is deterministic.

Status
    Every requested model gets one row per plane (a 3-D model its one ``volume`` row). ``status``
    is ``ok``; ``missing`` when its module under strokeseg/models/ does not exist yet; or
    ``failed`` when building, counting or timing raised (``error`` gives the one-line reason and
    the columns computed before the failure are kept) or its measuring process died (nothing is
    kept). With ``strict=True`` the first missing or failed model raises instead.
"""
from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import platform
import re
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg import models as registry
from strokeseg.config import PLANES, VOLUME, Config
from strokeseg.data import planes as planes_mod
from strokeseg.errors import ConfigError, StrokesegError

log = logging.getLogger(__name__)

COLUMNS = (
    "model", "plane", "status",
    "canvas_h", "canvas_w", "canvas_d", "canvas_source",
    "input_h", "input_w", "input_d", "input_c", "size_multiple", "input_padded",
    "parameters", "trainable_parameters", "canonical_parameters",
    "forward_gflops_per_slice", "forward_gflops_per_patch", "uncounted_ops",
    "batch_size", "repeats",
    "forward_ms_per_slice", "train_step_ms_per_slice", "forward_ms_per_patch", "train_step_ms_per_patch",
    "forward_gflops_per_second", "matmul_gflops_per_second", "matmul_fraction",
    "backend", "device", "dtype_policy", "jit_compile",
    "error",
)
STATUSES = ("ok", "missing", "failed")


class ModelReportError(StrokesegError):
    """A model could not be built, counted or timed (raised in strict mode)."""


# Options ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportOptions:
    models: tuple[str, ...] | None = None   # None = every registered model
    planes: tuple[str, ...] | None = None   # None = config.prepare.planes
    batch_size: int = 4                     # slices per timed call (volume rows: one patch)
    repeats: int = 5                        # timed calls (median reported)
    warmup: int = 2                         # untimed calls before timing (>= 1)
    matmul_size: int = 2048                 # N of the N×N float32 GEMM
    jit_compile: bool | str = "auto"        # passed to model.compile
    strict: bool = False                    # raise on the first missing/failed model
    seed: int = 0
    isolate: bool = True                    # each model in a fresh process (see build_report)

    @classmethod
    def quick(cls, **changes) -> "ReportOptions":
        """Small numbers for tests and smoke runs: 2 slices, 1 warm-up, 2 repeats, 1024×1024 GEMM,
        all in this process."""
        return replace(cls(batch_size=2, repeats=2, warmup=1, matmul_size=1024, isolate=False), **changes)

    def validate(self) -> "ReportOptions":
        for name in ("batch_size", "repeats", "matmul_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"models: {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.warmup) < 1:
            raise ConfigError(f"models: warmup must be >= 1 (the first call traces), got {self.warmup!r}")
        if self.jit_compile not in (True, False, "auto"):
            raise ConfigError(f"models: jit_compile must be true, false or 'auto', got {self.jit_compile!r}")
        if self.models is not None:
            if not self.models:
                raise ConfigError("models: the list of models is empty")
            for name in self.models:
                if name not in registry.MODULES:
                    raise ConfigError(f"unknown model {name!r}; choose among {registry.model_names()}")
        if self.planes is not None:
            for plane in self.planes:
                if plane not in PLANES:
                    raise ConfigError(f"models: unknown plane {plane!r}; choose among {PLANES}")
        return self


# Inputs per plane ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaneCanvas:
    plane: str
    shape: tuple[int, ...]      # (H, W) of a plane's slices; the (x, y, z) grid for the volume
    source: str                 # "03_convert store", "01_dataset grid plan" or "ATLAS grid"
    image_channels: int = 1     # the cohort's image channels (modalities) per slice or voxel
    patch: tuple[int, int, int] | None = None   # the volume: the patch the 3-D models train on


@dataclass(frozen=True)
class PlaneInput:
    plane: str
    canvas: tuple[int, ...]
    shape: tuple[int, ...]      # (H, W, C), or (x, y, z, M) for a volume model, as the model is built
    size_multiple: int

    @property
    def padded(self) -> bool:
        """Larger than the canvas on some axis (slices: rounded up; a volume patch: beyond the grid)."""
        return any(int(s) > int(c) for s, c in zip(self.shape, self.canvas))


def plane_canvases(workdir: Path | None, config: Config, plane_names=None) -> list[PlaneCanvas]:
    """The canvases models see: a published stage-03 store's geometry, else the ATLAS grid's."""
    from strokeseg.contracts import CONVERT, MANIFEST_JSON
    from strokeseg.data.stores import store_geometry
    from strokeseg.workdir import stage_dir

    plane_names = tuple(plane_names or config.prepare.planes)
    stores = stage_dir(workdir, CONVERT) if workdir is not None else None
    out = []
    for plane in plane_names:
        planes_mod.check_plane(plane)
        if stores is not None and (stores / MANIFEST_JSON).is_file():
            geometry = store_geometry(stores, plane)
            out.append(PlaneCanvas(plane, tuple(geometry.canvas.shape), "03_convert store",
                                   len(geometry.raw.get("channels", ["t1w"]))))
        else:
            canvas = planes_mod.canvas_for(planes_mod.ATLAS_SHAPE, plane, config.convert.canvas_multiple)
            out.append(PlaneCanvas(plane, tuple(canvas.shape), "ATLAS grid"))
    return out


def volume_canvas(workdir: Path | None, config: Config) -> PlaneCanvas:
    """The volume the 3-D models see: stage 01's grid plan and channels when published, else the ATLAS
    grid with one channel, and the patch their runs train on there."""
    from strokeseg.contracts import DATASET, MANIFEST_JSON
    from strokeseg.train.volume_data import run_patch
    from strokeseg.workdir import grid_plan, stage_dir

    if workdir is not None and (stage_dir(workdir, DATASET) / MANIFEST_JSON).is_file():
        plan = grid_plan(workdir)
        shape, channels, source = tuple(int(s) for s in plan.shape), len(plan.channels), "01_dataset grid plan"
    else:
        shape, channels, source = tuple(planes_mod.ATLAS_SHAPE), 1, "ATLAS grid"
    return PlaneCanvas(VOLUME, shape, source, channels, run_patch(config.training, shape))


def report_canvases(workdir: Path | None, config: Config, options: ReportOptions) -> list[PlaneCanvas]:
    """The canvases of the selected planes, plus the volume when a selected model is a 3-D one."""
    canvases = plane_canvases(workdir, config, options.planes)
    if any(registry.is_volumetric(name) for name in _model_names(options)):
        canvases.append(volume_canvas(workdir, config))
    return canvases


def model_canvases(name: str, canvases: list[PlaneCanvas]) -> list[PlaneCanvas]:
    """The canvases a model gets: the volume for a 3-D model, the planes for a slice model."""
    volumetric = registry.is_volumetric(name)
    return [c for c in canvases if (c.plane == VOLUME) == volumetric]


def plane_input(module, canvas: PlaneCanvas) -> PlaneInput:
    """The canvas rounded up to the model's SIZE_MULTIPLE, with its channel count (the model's adjacent
    slices times the cohort's image channels); for the volume, the patch with the image channels."""
    multiple = int(module.SIZE_MULTIPLE)
    if canvas.patch is not None:
        spatial, channels = canvas.patch, canvas.image_channels
    else:
        spatial, channels = canvas.shape, int(module.CANONICAL_INPUT[-1]) * canvas.image_channels
    sizes = tuple(-(-int(s) // multiple) * multiple for s in spatial)
    return PlaneInput(canvas.plane, tuple(canvas.shape), (*sizes, channels), multiple)


# FLOPs ----------------------------------------------------------------------------------------------
# Ops without arithmetic (data movement, bookkeeping, control flow handled by the walker).
_FREE_OPS = frozenset("""
Const Placeholder Identity IdentityN ReadVariableOp ResourceGather NoOp StopGradient PreventGradient
Reshape Shape ShapeN Size Rank Squeeze ExpandDims ConcatV2 Concat Pack Unpack Split SplitV Slice
StridedSlice Transpose ReverseV2 Pad PadV2 MirrorPad Cast Bitcast Fill ZerosLike OnesLike Range Tile GatherV2
GatherNd BroadcastTo BroadcastArgs BroadcastGradientArgs Select SelectV2 Assert CheckNumerics
DepthToSpace SpaceToDepth SpaceToBatchND BatchToSpaceND ResizeNearestNeighbor EnsureShape
TensorListReserve TensorListFromTensor TensorListGetItem TensorListSetItem TensorListStack
TensorListLength TensorListElementShape TensorArrayV3 TensorArrayReadV3 TensorArrayWriteV3
TensorArrayGatherV3 TensorArrayScatterV3 TensorArraySizeV3 TensorArrayConcatV3 TensorArraySplitV3
VarHandleOp AssignVariableOp LogicalAnd LogicalOr LogicalNot OptionalFromValue OptionalNone
""".split())
_CALL_OPS = {"PartitionedCall": "f", "StatefulPartitionedCall": "f"}
_LOOP_OPS = ("While", "StatelessWhile")
_BRANCH_OPS = ("If", "StatelessIf")


@dataclass
class FlopCount:
    """Forward FLOPs of one sample; multiply-add = 2 FLOPs (see the module docstring)."""

    total: int = 0
    by_op: Counter = field(default_factory=Counter)        # op type -> FLOPs
    uncounted: Counter = field(default_factory=Counter)    # op type -> output elements not counted
    notes: list[str] = field(default_factory=list)

    def add(self, other: "FlopCount", times: int = 1) -> None:
        self.total += other.total * times
        for op, value in other.by_op.items():
            self.by_op[op] += value * times
        for op, value in other.uncounted.items():
            self.uncounted[op] += value * times
        self.notes += [n for n in other.notes if n not in self.notes]

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def uncounted_ops(self) -> str:
        return ";".join(sorted(self.uncounted))


def forward_graph(model, input_shape: tuple[int, ...], batch: int = 1):
    """The traced TensorFlow graph of ``model(x, training=False)`` for x of shape (batch, *input_shape)."""
    import tensorflow as tf

    spec = tf.TensorSpec((batch, *input_shape), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), autograph=False)
    return forward.get_concrete_function(spec).graph


def count_flops(model, input_shape: tuple[int, ...]) -> FlopCount:
    """Forward FLOPs of ``model`` for one sample of shape ``input_shape`` ((H, W, C) slice, (x, y, z, M) patch)."""
    return graph_flops(forward_graph(model, input_shape, batch=1))


def profiler_flops(model, input_shape: tuple[int, ...]) -> int:
    """Total of ``tf.compat.v1.profiler``'s float_operation view (no loop or call handling)."""
    import tensorflow as tf

    graph = forward_graph(model, input_shape, batch=1)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return int(tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=opts).total_float_ops)


def graph_flops(graph) -> FlopCount:
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.util import deprecation

    count = FlopCount()
    for op in _live_ops(graph):
        kind = op.type
        if kind in _FREE_OPS:
            continue
        if kind in _CALL_OPS:
            count.add(_function_flops(graph, op.get_attr(_CALL_OPS[kind]).name, op.name))
            continue
        if kind in _LOOP_OPS:
            body = _function_flops(graph, op.get_attr("body").name, op.name)
            trips = _static_int(op.inputs[1]) if len(op.inputs) > 1 else None  # maximum_iterations
            if trips is None or trips < 0:
                count.notes.append(f"{op.name}: loop trip count unknown, body counted once")
                trips = 1
            count.add(body, trips)
            continue
        if kind in _BRANCH_OPS:
            branches = [_function_flops(graph, op.get_attr(a).name, op.name) for a in ("then_branch", "else_branch")]
            count.add(max(branches, key=lambda b: b.total))
            count.notes.append(f"{op.name}: conditional, the costlier branch counted")
            continue
        if not (op.outputs and op.outputs[0].dtype.is_floating):
            continue   # integer/boolean bookkeeping (loop counters, shape arithmetic, comparisons)
        if kind == "Einsum":
            flops = _einsum_flops(op)
        elif kind == "Conv3DBackpropInputV2":
            flops = _conv3d_transpose_flops(op)
        else:
            try:
                with deprecation.silence():   # the registered counters use a deprecated shape helper
                    flops = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            except (ValueError, TypeError) as exc:   # e.g. a shape not fully defined
                count.notes.append(f"{op.name} ({kind}): not counted ({exc})")
                flops = None
        if flops is None:
            count.uncounted[kind] += _elements(op)
        else:
            count.total += int(flops)
            count.by_op[kind] += int(flops)
    return count


def _live_ops(graph) -> list:
    """The ops the graph's outputs depend on, in graph order (tracing can leave dead ops behind:
    Keras's RNN traces one step outside its loop only to learn the output shapes)."""
    targets = [t.op for t in getattr(graph, "outputs", []) or []]
    targets += list(getattr(graph, "control_outputs", []) or [])
    if not targets:
        return graph.get_operations()
    live, stack = set(), targets
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        live.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op.name in live]


def _function_flops(graph, name: str, caller: str) -> FlopCount:
    g = graph
    while g is not None:
        function = None
        if hasattr(g, "_get_function"):
            function = g._get_function(name)   # noqa: SLF001 — TF keeps no public lookup by name
        if function is None:
            function = getattr(g, "_functions", {}).get(name)
        if function is not None and getattr(function, "graph", None) is not None:
            return graph_flops(function.graph)
        g = getattr(g, "outer_graph", None)
    missing = FlopCount()
    missing.notes.append(f"{caller}: function {name} not found, not counted")
    missing.uncounted["FunctionCall"] += 1
    return missing


def _static_int(tensor) -> int | None:
    value = _static_value(tensor)
    return None if value is None or np.size(value) != 1 else int(np.asarray(value).reshape(()))


def _static_value(tensor, depth: int = 0):
    """tf.get_static_value, plus reductions of static values (Keras RNNs take the max of a length)."""
    import tensorflow as tf

    value = tf.get_static_value(tensor)
    if value is not None or depth > 8:
        return value
    op = tensor.op
    reductions = {"Max": np.max, "Min": np.min, "Sum": np.sum, "Prod": np.prod}
    if op.type in reductions:
        data, axes = (_static_value(t, depth + 1) for t in op.inputs)
        if data is None or axes is None:
            return None
        axes = tuple(int(a) for a in np.atleast_1d(axes))
        if not axes:
            return np.asarray(data)
        return reductions[op.type](data, axis=axes, keepdims=bool(op.get_attr("keep_dims")))
    if op.type == "Identity":
        return _static_value(op.inputs[0], depth + 1)
    return None


def _einsum_flops(op) -> int | None:
    """2 FLOPs per point of the index space for a two-operand einsum, 1 for one operand."""
    equation = op.get_attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    inputs = equation.split("->")[0].split(",")
    if "." in equation or len(inputs) != len(op.inputs):
        return None
    sizes = {}
    for letters, tensor in zip(inputs, op.inputs):
        shape = tensor.shape
        if shape.rank != len(letters) or not shape.is_fully_defined():
            return None
        sizes.update(zip(letters, shape.as_list()))
    return (2 if len(inputs) > 1 else 1) * math.prod(sizes.values())


def _conv3d_transpose_flops(op) -> int | None:
    """Keras's Conv3DTranspose, counted as TensorFlow counts the 2-D one (Conv2DBackpropInput):
    2·kd·kh·kw·C_in per output element, divided by the stride volume."""
    output, kernel = op.outputs[0].shape, op.inputs[1].shape   # kernel: (kd, kh, kw, C_out, C_in)
    if not (output.is_fully_defined() and kernel.is_fully_defined()):
        return None
    data_format = op.get_attr("data_format")
    data_format = data_format.decode() if isinstance(data_format, bytes) else data_format
    strides = op.get_attr("strides")
    strides = strides[1:4] if data_format == "NDHWC" else strides[2:5]
    kd, kh, kw, _, c_in = kernel.as_list()
    return 2 * output.num_elements() * kd * kh * kw * c_in // math.prod(strides)


def _elements(op) -> int:
    if not op.outputs or not op.outputs[0].shape.is_fully_defined():
        return 0
    return int(op.outputs[0].shape.num_elements())


# Timing ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    forward_ms: float           # per sample (a slice, or a patch)
    train_step_ms: float
    jit_compile: object


def _median_seconds(call, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_model(model, input_shape: tuple[int, ...], batch_size: int, repeats: int, warmup: int,
               jit_compile: bool | str = "auto", seed: int = 0) -> Timing:
    """Median forward and train-step time per sample (ms) on a batch of random samples (slices or patches).

    The model is compiled in place (Adam, binary cross-entropy); use a throwaway build.
    """
    import keras

    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, *input_shape), dtype=np.float32)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss=keras.losses.BinaryCrossentropy(), jit_compile=jit_compile)
    # Built before the first step: otherwise TensorFlow traces the train step twice, once while it creates
    # the optimizer's variables and once more without (12 of 27 s for a full-width RAX-Net on 2 cores).
    model.optimizer.build(model.trainable_variables)
    prediction = model.predict_on_batch(x)   # also builds the predict function
    y = keras.tree.map_structure(lambda p: (rng.random(np.shape(p)) < 0.1).astype(np.float32), prediction)
    forward = _median_seconds(lambda: model.predict_on_batch(x), repeats, max(warmup - 1, 0))
    train = _median_seconds(lambda: model.train_on_batch(x, y), repeats, warmup)
    return Timing(1e3 * forward / batch_size, 1e3 * train / batch_size, getattr(model, "jit_compile", jit_compile))


def matmul_gflops(size: int = 2048, repeats: int = 5, warmup: int = 2, min_seconds: float = 0.05,
                  seed: int = 0) -> float:
    """This machine's float32 GEMM throughput through keras.ops.matmul (GFLOP/s, 2·N³ per product).

    The product runs as a compiled function (like the models' steps; eager dispatch alone costs
    a third of the throughput on a CPU). Each timed sample runs enough products back to back to
    last about ``min_seconds`` and waits for the last one, so asynchronous devices are timed to
    completion. On GPUs TensorFlow runs float32 matmuls as TF32 by default, as it does the
    models' convolutions.
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    b = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    product = tf.function(lambda x, y: keras.ops.sum(keras.ops.matmul(x, y)), autograph=False)

    def products(k: int) -> None:
        result = None
        for _ in range(k):
            result = product(a, b)
        keras.ops.convert_to_numpy(result)

    for _ in range(max(warmup, 1)):
        products(1)
    start = time.perf_counter()
    products(1)
    single = max(time.perf_counter() - start, 1e-7)
    k = int(min(max(math.ceil(min_seconds / single), 1), 1000))
    seconds = _median_seconds(lambda: products(k), repeats, 0)
    return 2.0 * size ** 3 * k / seconds / 1e9


def device_description() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        except (ValueError, RuntimeError):
            name = gpus[0].name
        return f"GPU {name}" + (f" x{len(gpus)}" if len(gpus) > 1 else "")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {cpu} ({cores} cores)"


def machine_info(options: ReportOptions) -> dict:
    """Backend, device and versions, for the table and the manifest."""
    import keras
    import tensorflow as tf

    return {"backend": keras.backend.backend(), "device": device_description(),
            "dtype_policy": keras.config.dtype_policy().name, "keras": keras.__version__,
            "tensorflow": tf.__version__, "matmul_size": options.matmul_size}


def measure_matmul(options: ReportOptions) -> float:
    return matmul_gflops(options.matmul_size, max(options.repeats, 3), options.warmup, seed=options.seed)


# The table --------------------------------------------------------------------------------------------
@dataclass
class Report:
    table: pd.DataFrame
    summaries: dict[str, str]
    machine: dict


def model_summary(model) -> str:
    """``model.summary()`` as plain text, wide enough that no column is cropped."""
    lines: list[str] = []
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"   # rich and keras size the table from the terminal otherwise
    try:
        model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return re.sub(r"[ \t]+\n", "\n", "\n".join(lines)).rstrip() + "\n"


def _load(name: str):
    """(module, status, error): status 'missing' only when the model's own module file is absent."""
    module_name = f"strokeseg.models.{registry.MODULES[name]}"
    try:
        return registry.architecture(name), "ok", ""
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            path = f"strokeseg/models/{registry.MODULES[name]}.py"
            return None, "missing", f"{path} does not exist yet (registered as {name!r})"
        return None, "failed", _one_line(exc)
    except Exception as exc:  # noqa: BLE001 — any import fault is reported in the table
        return None, "failed", _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def report_model(name: str, canvases: list[PlaneCanvas], options: ReportOptions,
                 machine: dict) -> tuple[list[dict], str]:
    """One row per canvas for one model, and its summary text."""
    import keras

    module, status, error = _load(name)
    rows, sections, summary_text = [], [], ""
    for canvas in canvases:
        row = _row(name, canvas, options, machine, status, error)
        if module is not None:
            with _quiet_tensorflow():   # each fresh model's step functions trip TF's retracing warning
                _measure(name, module, canvas, options, row, sections)
            if not summary_text and row.get("_summary"):
                summary_text = row["_summary"]
        row.pop("_summary", None)
        rows.append({c: row[c] for c in COLUMNS})
        keras.backend.clear_session(free_memory=True)
        _check_strict(options, row)
    return rows, _summary_file(name, rows, summary_text, sections)


def _row(name: str, canvas: PlaneCanvas, options: ReportOptions, machine: dict, status: str, error: str) -> dict:
    """A row's columns known before measuring."""
    row = {c: None for c in COLUMNS}
    row.update(zip(("canvas_h", "canvas_w", "canvas_d"), canvas.shape))
    # One patch per timed call: a full-width 3-D model's train step on a CPU takes minutes and GBs.
    row.update(model=name, plane=canvas.plane, status=status, error=error, canvas_source=canvas.source,
               batch_size=1 if canvas.patch is not None else options.batch_size, repeats=options.repeats,
               matmul_gflops_per_second=machine["matmul_gflops_per_second"],
               backend=machine["backend"], device=machine["device"], dtype_policy=machine["dtype_policy"])
    return row


def _check_strict(options: ReportOptions, row: dict) -> None:
    if options.strict and row["status"] != "ok":
        raise ModelReportError(f"model {row['model']!r} ({row['plane']}): {row['status']}: {row['error']}")


@contextlib.contextmanager
def _quiet_tensorflow():
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _measure(name, module, canvas, options, row, sections) -> None:
    unit = _unit(canvas)
    try:
        spec = plane_input(module, canvas)
        row.update(zip(("input_h", "input_w", "input_d")[:len(spec.shape) - 1], spec.shape))
        row.update(input_c=spec.shape[-1], size_multiple=spec.size_multiple, input_padded=spec.padded,
                   canonical_parameters=int(getattr(module, "CANONICAL_PARAMS", 0)) or None)
        model = registry.build_model(name, spec.shape)
        row["parameters"] = int(model.count_params())
        row["trainable_parameters"] = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
        row["_summary"] = f"Built for {canvas.plane} input {_shape_text(spec.shape)}:\n\n{model_summary(model)}"
        flops = count_flops(model, spec.shape)
        row[f"forward_gflops_per_{unit}"] = flops.gflops
        row["uncounted_ops"] = flops.uncounted_ops
        sections.append(_flop_section(canvas.plane, spec, flops, unit))
        timing = time_model(model, spec.shape, row["batch_size"], options.repeats, options.warmup,
                            options.jit_compile, options.seed)
        row[f"forward_ms_per_{unit}"] = timing.forward_ms
        row[f"train_step_ms_per_{unit}"] = timing.train_step_ms
        row["jit_compile"] = timing.jit_compile
        achieved = flops.gflops / (timing.forward_ms / 1e3)
        row["forward_gflops_per_second"] = achieved
        row["matmul_fraction"] = achieved / row["matmul_gflops_per_second"]
        row["status"], row["error"] = "ok", ""
    except Exception as exc:  # noqa: BLE001 — reported in the table (or raised in strict mode)
        row["status"], row["error"] = "failed", _one_line(exc)
        log.warning("07 models: %s (%s) failed: %s", name, canvas.plane, row["error"])


def _unit(canvas: PlaneCanvas) -> str:
    """What a row's costs are per: a slice of a plane, or a patch of the volume."""
    return "patch" if canvas.patch is not None else "slice"


def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _flop_section(plane: str, spec: PlaneInput, flops: FlopCount, unit: str = "slice") -> str:
    if unit == "patch":
        where = f" (patch of the {_shape_text(spec.canvas)} grid{', zero-padded' if spec.padded else ''})"
    else:
        where = (f" (canvas {_shape_text(spec.canvas)} padded to a multiple of {spec.size_multiple})"
                 if spec.padded else "")
    lines = [f"{plane}: input {_shape_text(spec.shape)}{where}, "
             f"forward {flops.gflops:.4f} GFLOPs per {unit} (multiply-add = 2)"]
    for op, value in sorted(flops.by_op.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {op:<28}{value / 1e9:>14.4f} GFLOPs {100 * value / max(flops.total, 1):6.2f} %")
    if flops.uncounted:
        lines.append("  not counted (no registered FLOP count; output elements): "
                     + ", ".join(f"{op} {n:,}" for op, n in sorted(flops.uncounted.items())))
    lines += [f"  note: {n}" for n in flops.notes]
    return "\n".join(lines)


_TEXT_COLUMNS = ("plane", "status", "input_h", "input_w", "input_c", "parameters", "forward_gflops_per_slice",
                 "forward_ms_per_slice", "train_step_ms_per_slice", "matmul_fraction")
_VOLUME_TEXT_COLUMNS = ("plane", "status", "input_h", "input_w", "input_d", "input_c", "parameters",
                        "forward_gflops_per_patch", "forward_ms_per_patch", "train_step_ms_per_patch",
                        "matmul_fraction")


def _summary_file(name: str, rows: list[dict], summary: str, sections: list[str]) -> str:
    volume = any(r["plane"] == VOLUME for r in rows)
    frame = pd.DataFrame(rows)[list(_VOLUME_TEXT_COLUMNS if volume else _TEXT_COLUMNS)]
    parts = [f"Model {name!r}",
             f"device: {rows[0]['device']}, backend: {rows[0]['backend']}, "
             f"matmul: {rows[0]['matmul_gflops_per_second']:.1f} GFLOP/s",
             "", frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    errors = sorted({f"{r['status']}: {r['error']}" for r in rows if r["status"] != "ok"})
    if errors:
        parts += ["", *errors]
    if sections:
        parts += ["", "Forward FLOPs by op type", *sections]
    if summary:
        parts += ["", summary]
    return "\n".join(parts).rstrip() + "\n"


def _report_model_isolated(name, canvases, options, machine):
    """``report_model`` in a fresh process when ``options.isolate``: traced graphs and allocator
    arenas of one model otherwise pile up under the next (about 14 GB over the eight models in one
    process), and each model's timing should not pay for its predecessors' leftovers."""
    if not options.isolate:
        return report_model(name, canvases, options, machine)
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(report_model, name, canvases, options, machine).result()
    except BrokenProcessPool:
        # Killed without a Python error, most often by the kernel for memory (a full-width 3-D model's
        # train step needs 14 GB or more); the other models' rows are still worth writing.
        error = "the measuring process died (killed, most likely out of memory); nothing was recorded"
        log.warning("07 models: %s: %s", name, error)
        rows = [_row(name, canvas, options, machine, "failed", error) for canvas in canvases]
        for row in rows:
            _check_strict(options, row)
        return rows, _summary_file(name, rows, "", [])


def _model_names(options: ReportOptions) -> list[str]:
    return list(options.models) if options.models is not None else registry.model_names()


def build_report(canvases: list[PlaneCanvas], options: ReportOptions, progress: bool = True) -> Report:
    """Measure every requested model on its canvases (:func:`model_canvases`; the volume canvas from
    :func:`report_canvases`); one row per (model, plane), registry order."""
    from tqdm import tqdm

    options = options.validate()
    names = _model_names(options)
    if any(registry.is_volumetric(n) for n in names) and not any(c.plane == VOLUME for c in canvases):
        raise ConfigError("models: a 3-D model is selected but no volume canvas was given (see report_canvases)")
    machine = machine_info(options)
    rows, summaries, matmul = [], {}, {}
    for name in tqdm(names, desc="07 models", disable=not progress, leave=False):
        # Measured again before every model: on a shared machine the load changes between models,
        # and a row's fraction should compare two measurements taken under the same load.
        matmul[name] = measure_matmul(options)
        log.info("07 models: %s on %s, matmul %.1f GFLOP/s", name, machine["device"], matmul[name])
        model_rows, summaries[name] = _report_model_isolated(
            name, model_canvases(name, canvases), options, {**machine, "matmul_gflops_per_second": matmul[name]})
        rows += model_rows
    machine["matmul_gflops_per_second"] = matmul
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return Report(table, summaries, machine)

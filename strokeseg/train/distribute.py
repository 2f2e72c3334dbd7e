"""Choosing the distribution strategy and the mixed-precision policy for training.

Strategy (`choose_strategy`), TensorFlow backend only:

* ``TF_CONFIG`` set -> ``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS). Every worker runs
  the same program with its own ``TF_CONFIG``. The strategy must be created **before any other
  TensorFlow op runs** in the process (TF raises "Collective ops must be configured at program
  startup" otherwise). Listing devices and ``set_precision`` before it are fine. Variables
  created in ``strategy.scope()`` get worker 0's initial values by broadcast, so workers may be
  seeded differently. Creating variables there (building a model, building an optimizer) is a
  collective step: every worker must do it, in the same order.
* no ``TF_CONFIG`` but GPUs visible -> ``tf.distribute.MirroredStrategy`` over all local GPUs.
* otherwise -> ``tf.distribute.get_strategy()``, the default strategy (one replica, no scope
  needed, but entering its scope is harmless).

On the JAX or torch backends, tf.distribute does not apply, so `choose_strategy` returns None.
Callers use ``strategy_scope(strategy)``, which is a null context for None.

Keras 3.15 needs a fix for ``model.fit`` under multi-worker MWMS (observed here with TF 2.21:
both errors below, on every worker). Keras' TF trainer calls ``strategy.reduce("MEAN", (x, y), axis=None)``
on the first distributed batch (``_maybe_symbolic_build``), but MWMS's reduce accepts only a
single value, not a tuple ("Attempt to convert a value (PerReplica...)"). Keras then reduces the
scalar step logs with ``strategy.reduce("MEAN", loss, axis=0)``, which fails on rank-0 values
("Invalid reduction dimension 0"). ``patch_multi_worker_reduce`` wraps that one strategy
object's ``reduce`` so it maps over nests and uses axis=None for scalars. `choose_strategy`
applies it to the MWMS strategy it returns. With the fix, fit (with validation_data), evaluate
and predict run, and both workers end with bitwise-identical weights
(tests/train/test_distribute.py runs 2 CPU workers).

Input under MWMS: Keras passes a ``tf.data.Dataset`` to ``strategy.experimental_distribute_dataset``.
That call splits each dataset element (the *global* batch) into one piece per replica
(``rebatch``) and, with several workers, auto-shards. With
``from_tensor_slices(indices).map(numpy_function)`` there is no file source, so
``AutoShardPolicy.AUTO`` falls back to DATA. ``FILE`` fails ("Found an unshardable source
dataset"). DATA is right: every worker runs the whole input pipeline (so reads every batch) and
keeps only its own pieces. ``OFF`` is wrong: each worker takes every piece in turn, so workers
train on the same data at each step. Keras stops after ``cardinality`` steps, so it also skips
half an epoch without saying so. `global_batches` sets DATA explicitly, so the outcome does not
depend on how the source is built. Another way is ``strategy.distribute_datasets_from_function``:
each worker shards the index dataset itself and reads only its own batches, and Keras' fit
accepts the result. In a 2-worker run it gave the same assignment and the same loss as
`global_batches` + DATA.

Precision (`precision_policy`, `set_precision`): "auto" means mixed_float16 when a GPU is visible,
otherwise float32. float16 on CPU is slow and gains nothing. Under a mixed_float16 global policy,
``Model.compile`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer`` by itself
(``auto_scale_loss=True``), so callers must not wrap it again. Set the policy before building
models. Layers read the global policy when they are created.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os

import keras

from strokeseg.config import PRECISIONS  # ("auto", "float32", "mixed_float16", "mixed_bfloat16")
from strokeseg.errors import ConfigError

_WORKER_TYPES = ("chief", "worker")


# --------------------------------------------------------------------------------------------
# TF_CONFIG

def tf_config() -> dict | None:
    """The parsed and validated ``TF_CONFIG``, or None when it is unset or blank."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        # TF's own TFConfigClusterResolver treats blank as "no cluster", so do the same.
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(config, dict):
        raise ConfigError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError("TF_CONFIG needs a non-empty 'cluster' object, e.g. "
                          '{"worker": ["host0:port", "host1:port"]}')
    for kind, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a for a in addresses)):
            raise ConfigError(f"TF_CONFIG cluster['{kind}'] must be a non-empty list of 'host:port' strings")
    if "ps" in cluster:
        # Parameter servers need ParameterServerStrategy and a coordinator, which this package
        # does not implement. A clear error is better than a hang.
        raise ConfigError("TF_CONFIG names 'ps' tasks; only MultiWorkerMirroredStrategy "
                          "(chief/worker tasks) is supported")
    if not set(cluster) & set(_WORKER_TYPES):
        raise ConfigError("TF_CONFIG cluster needs 'worker' (and optionally one 'chief') tasks")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError("TF_CONFIG cluster may have at most one 'chief'")
    if not isinstance(task, dict):
        raise ConfigError('TF_CONFIG needs a \'task\' object, e.g. {"type": "worker", "index": 0}')
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or kind not in cluster:
        raise ConfigError(f"TF_CONFIG task type {kind!r} is not one of the cluster's {sorted(cluster)}")
    # bool is an int subclass: reject true/false explicitly.
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG task index {index!r} is not in 0..{len(cluster[kind]) - 1} "
                          f"for task type '{kind}'")
    return config


def worker_info() -> tuple[str | None, int, bool, int]:
    """(task_type, task_index, is_chief, n_workers) from ``TF_CONFIG``.

    The chief is the "chief" task, or worker 0 when the cluster has no chief (TF's own
    convention). n_workers counts the chief and worker tasks, the processes that train.
    Without TF_CONFIG this returns (None, 0, True, 1): one process that is its own chief.
    """
    config = tf_config()
    if config is None:
        return None, 0, True, 1
    cluster, task = config["cluster"], config["task"]
    kind, index = task["type"], task["index"]
    has_chief = "chief" in cluster
    is_chief = kind == "chief" or (not has_chief and kind == "worker" and index == 0)
    n_workers = sum(len(cluster.get(k, [])) for k in _WORKER_TYPES)
    return kind, index, is_chief, n_workers


# --------------------------------------------------------------------------------------------
# strategy

def _is_tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def _gpu_visible() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            # list_physical_devices does not initialise the eager context, so calling it before
            # MultiWorkerMirroredStrategy is created is safe (checked).
            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax
            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch
            return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken accelerator runtime means "no GPU here"
        return False
    return False


def choose_strategy():
    """MWMS when ``TF_CONFIG`` is set, MirroredStrategy over local GPUs, else the default strategy.

    Returns None on a non-TensorFlow backend: use ``strategy_scope(strategy)`` as the scope.
    Call this first, before any TensorFlow op runs (an MWMS requirement). Then build and compile
    the model inside ``strategy.scope()``.
    """
    if not _is_tensorflow():
        return None
    import tensorflow as tf

    # Validate first: a bad TF_CONFIG gives a ConfigError here, not a cryptic resolver error.
    config = tf_config()
    if config is not None:
        try:
            # The cluster resolver reads TF_CONFIG itself. CommunicationOptions stay AUTO: RING
            # on CPU, NCCL between GPUs where TF finds it.
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            if "program startup" in str(error):
                raise RuntimeError("choose_strategy() must be called before any TensorFlow op runs "
                                   f"in this process (MultiWorkerMirroredStrategy: {error})") from error
            raise
        return patch_multi_worker_reduce(strategy)
    if tf.config.list_physical_devices("GPU"):
        # All visible GPUs. CUDA_VISIBLE_DEVICES restricts them. With one GPU this is a
        # 1-replica strategy, which behaves like the default one.
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@functools.cache
def process_strategy():
    """The process's one distribution strategy (`choose_strategy`): created once, before any run builds
    a model, because MultiWorkerMirroredStrategy must be created before the first TensorFlow op and
    cannot be created twice."""
    return choose_strategy()


def describe_strategy(strategy) -> str:
    """A strategy in words, with its replica count."""
    if strategy is None:
        return f"none ({keras.backend.backend()} backend: tf.distribute does not apply)"
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return f"MultiWorkerMirroredStrategy (TF_CONFIG), {replicas} replicas"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return f"MirroredStrategy over {replicas} local replica(s)"
    return "the default strategy (one replica)"


def strategy_scope(strategy):
    """``strategy.scope()``, or a null context when `choose_strategy` returned None."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def patch_multi_worker_reduce(strategy):
    """Make ``strategy.reduce`` accept the nests and scalars Keras 3.15 passes under MWMS.

    Only this one strategy object changes (an instance attribute), and the call is idempotent.
    Keras finds the same object through ``tf.distribute.get_strategy()`` in the strategy's scope.
    Any other strategy is returned unchanged, since only multi-worker MWMS takes these Keras
    code paths.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy
    if getattr(strategy, "_strokeseg_reduce_patched", False):
        return strategy
    original = strategy.reduce

    def rank(value):
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        shape = getattr(value, "shape", None)
        return None if shape is None else tf.TensorShape(shape).rank

    def reduce(reduce_op, value, axis=None):
        # axis defaults to None: Keras also calls reduce("SUM", v) without one, but TF's V2
        # signature requires it.
        def one(leaf):
            # "Mean over replicas" of a scalar is what Keras means by axis=0 here. Without a
            # multi-worker strategy it computes tf.reduce_mean(local_results, axis=0).
            return original(reduce_op, leaf, axis=None if rank(leaf) == 0 else axis)
        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce
    strategy._strokeseg_reduce_patched = True
    return strategy


# --------------------------------------------------------------------------------------------
# precision

def precision_policy(name: str) -> str:
    """Resolve a precision setting to a Keras dtype-policy name.

    "auto" -> "mixed_float16" when a GPU is visible, else "float32". bfloat16 is never chosen
    automatically, because only recent GPUs (and TPUs) run it fast.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "auto":
        return "mixed_float16" if _gpu_visible() else "float32"
    return name


def set_precision(name: str) -> str:
    """Set Keras' global dtype policy from a precision setting and return the resolved name.

    Call it before building models. Under mixed_float16, ``compile`` wraps the optimizer in a
    LossScaleOptimizer by itself. Its extra variables (step_counter, dynamic_scale) are saved in
    ``.weights.h5``. A float32 model's optimizer therefore cannot take a mixed_float16 run's
    optimizer state (Keras skips it with a warning).
    """
    resolved = precision_policy(name)
    keras.mixed_precision.set_global_policy(resolved)
    return resolved


# --------------------------------------------------------------------------------------------
# what a training stage runs on

def visible_devices() -> list[str]:
    """The devices the backend sees, e.g. ["CPU:0", "GPU:0"] (listing them starts no TensorFlow op)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [f"{d.device_type}:{i}" for kind in ("CPU", "GPU")
                for i, d in enumerate(tf.config.list_physical_devices(kind))]
    if backend == "jax":
        import jax

        return [f"{d.platform.upper()}:{d.id}" for d in jax.devices()]
    return [backend]


def training_environment(precision: str, require_gpu: bool) -> str:
    """One line for a training stage's log: the devices, the strategy and the precision it will use.
    With ``require_gpu`` and no GPU visible, a ConfigError instead: days of training on a CPU by
    mistake cost more than a stop."""
    devices = visible_devices()
    gpu = _gpu_visible()
    if require_gpu and not gpu:
        raise ConfigError(f"training.require_gpu is set but no GPU is visible (devices: {', '.join(devices)}); "
                          "install the GPU build (make venv GPU=1) or set training.require_gpu=false")
    strategy = describe_strategy(process_strategy())      # the one the runs will use
    resolved = precision_policy(precision)
    where = "GPU" if gpu else "CPU"
    return (f"devices {', '.join(devices)}; strategy: {strategy}; precision: {resolved} on {where}"
            + (f" (training.precision={precision})" if precision == "auto" else ""))


# --------------------------------------------------------------------------------------------
# input

def global_batches(dataset, replicas: int, drop_remainder: bool = True):
    """Group ``replicas`` consecutive per-replica batches into one global batch.

    Each element of `dataset` is a per-replica batch, e.g. (images (B, H, W, C), masks
    (B, H, W, 1)). Any nest of tensors works. The result's elements concatenate `replicas` of
    them along axis 0. tf.distribute splits every global batch back into equal pieces, one per
    replica. So for replicas = strategy.num_replicas_in_sync (the *global* count, across all
    workers), each replica receives exactly one original batch, unchanged, at every step.
    Observed:

    * local replicas (MirroredStrategy, one worker): piece r goes to replica r. Step s trains on
      batches s*R .. s*R+R-1, in order.
    * MWMS, 2 workers x 1 replica: worker 0 gets batches 0, 2, 4, ..., worker 1 gets 1, 3, 5, ...
      In general, piece p of a group goes to worker p % W, local replica p // W. This was
      checked by replaying TF's rebatch + DATA auto-shard for W=2, R=2 and W=3, R=1.
    * without this transform, each original batch of B is split B/R per replica, so the global
      batch stays B.

    The result's auto-shard policy is DATA; see the module docstring.

    drop_remainder=True (the default) drops the last n % replicas batches of an epoch. Every
    step then has the same static shape and the one-batch-per-replica rule holds without
    exception. Note that with a fixed batch order the same batches are dropped every epoch.
    With drop_remainder=False they are kept, and TF splits that partial global batch evenly over
    the replicas (observed: a lone batch of 4 became 2 + 2, locally and across two workers).

    replicas == 1 returns `dataset` unchanged.
    """
    import tensorflow as tf

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be a positive integer; got {replicas!r}")
    if replicas == 1:
        return dataset

    def merge(x):
        # (replicas, B, ...) -> (replicas * B, ...). Reshaping a batch of batches keeps the
        # order, so it is exactly a concatenation along axis 0. Keep the static shape where it
        # is known: tf.distribute reads the global batch size from it (compute_batch_size).
        # That gives exact equal pieces instead of the legacy rebatch path.
        static = x.shape
        flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))
        if static.rank is not None:
            lead = static[0] * static[1] if static[0] is not None and static[1] is not None else None
            flat.set_shape([lead] + static[2:].as_list())
        return flat

    grouped = dataset.batch(replicas, drop_remainder=drop_remainder)
    grouped = grouped.map(lambda *parts: tf.nest.map_structure(merge, parts if len(parts) > 1 else parts[0]),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # DATA, not AUTO: the same result for an index-driven source (AUTO falls back to DATA), and no
    # silent switch to per-file sharding if the source ever becomes a list of files.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return grouped.with_options(options)

"""Training several runs at once, each in a worker process with its share of the CPU cores.

A narrow network on a CPU does not keep two cores busy: its many small operations wait on each
other. One 1/8-width RAX-Net training step took 0.90 s with both cores of the project's 2-core
machine and 1.32 s with one; two such runs side by side took 1.32 s per step each, and three took
2.0 s: about 1.36 times the steps per second of one run at a time (README, 08_training). So stages
08 and 09 can train ``training.parallel_runs`` runs at once: every run in a process of its own
(started fresh, "spawn", so that TensorFlow is initialised there with the worker's thread count),
each with ``cores // workers`` intra- and inter-op threads. Each run trains and is evaluated as it
would be alone but for the thread count, which changes the last bits of its floats; and side by side
the runs are not bit-reproducible from one stage run to the next (README, 08_training: measured, the
cause not found), where one after another they are.

Workers die with the stage (Linux: the parent-death signal), so a killed stage leaves no run
training behind it, and a rerun resumes each run from its last checkpoint, as it would one at a time.
With a GPU visible, or in a multi-worker cluster (``TF_CONFIG``), runs go one after another: the
devices are the strategy's to share.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Iterable

from strokeseg.parallel import die_with
from strokeseg.train.distribute import tf_config
from strokeseg.train.experiments import Inputs, train_and_evaluate
from strokeseg.train.loop import RunSpec

log = logging.getLogger(__name__)


def thread_count(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads of each of ``workers`` processes sharing ``cores`` (default: this machine's)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


def worker_count(parallel_runs: int, runs: int) -> int:
    """How many runs train at once: ``parallel_runs``, no more than there are runs, and one where the
    devices belong to a strategy (a GPU visible, or a multi-worker cluster)."""
    workers = min(parallel_runs, runs)
    if workers <= 1:
        return 1
    if tf_config() is not None:
        log.info("training.parallel_runs=%d ignored in a multi-worker cluster: runs go one after another",
                 parallel_runs)
        return 1
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        log.info("training.parallel_runs=%d ignored with a GPU visible: runs go one after another", parallel_runs)
        return 1
    return workers


def train_runs(specs: Iterable[RunSpec], inputs: Inputs, fresh: bool = False, progress: bool = True,
               parallel_runs: int = 1) -> bool:
    """Train (or resume) and evaluate every run, ``parallel_runs`` at a time. Returns False on a
    non-chief worker of a multi-worker cluster (see :func:`strokeseg.train.experiments.train_and_evaluate`)."""
    specs = list(specs)
    workers = worker_count(parallel_runs, len(specs))
    if workers == 1:
        chief = True
        for spec in specs:
            chief = train_and_evaluate(spec, inputs, fresh, progress)
        return chief
    threads = thread_count(workers)
    log.info("training %d runs, %d at a time, %d thread(s) each", len(specs), workers, threads)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(os.getpid(), threads, logging.getLogger().getEffectiveLevel())) as pool:
        # Keras' per-step bars of several processes would interleave; each epoch is still logged.
        for _ in pool.map(partial(train_and_evaluate, inputs=inputs, fresh=fresh, progress=False), specs):
            pass
    return True


def _start_worker(stage_pid: int, threads: int, level: int) -> None:
    """A worker's set-up, before it imports Keras: die with the stage, log as the stage logs, and
    give TensorFlow its share of the cores."""
    die_with(stage_pid)
    from strokeseg.runtime import configure_logging

    configure_logging(quiet=level > logging.INFO)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

"""Per-subject work over a process pool, results in input order, with a progress bar.

Decompressing NIfTI volumes is CPU-bound, so stages that read every volume spread subjects over
processes (one per core by default). Results come back in input order, so outputs do not depend
on scheduling.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
PR_SET_PDEATHSIG = 1     # prctl(2): the signal a process gets when its parent dies


def worker_count(requested: int) -> int:
    return requested if requested > 0 else (os.cpu_count() or 1)


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str,
                progress: bool = True) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes (inline when 1), yielding in input order."""
    workers = min(worker_count(workers), max(len(items), 1))
    bar = tqdm(total=len(items), desc=desc, unit="subject", disable=not progress, leave=False)
    try:
        if workers == 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        # spawn, not fork: a parent that imported TensorFlow must not be forked.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(fn, items, chunksize=1):
                yield result
                bar.update()
    finally:
        bar.close()


@contextmanager
def beside(fn: Callable[..., R], *args, workers: int) -> Iterator[Callable[[], R]]:
    """``fn(*args)`` in one more process while the block goes on; the block gets a function that
    waits for ``fn``'s value (and raises its error). A stage's serial tail, which leaves a core idle,
    can so run two things at once. With ``workers`` 1 (one core asked for) ``fn`` runs here, first.
    Leaving the block always waits for ``fn`` to end."""
    if worker_count(workers) == 1:
        value = fn(*args)
        yield lambda: value
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.submit(fn, *args).result


def die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent, ``parent_pid``, dies (Linux; elsewhere a
    no-op): a worker must not go on writing the outputs of a stage that was killed."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:   # the parent died before the signal was asked for
        os._exit(1)

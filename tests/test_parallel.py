"""strokeseg.parallel: results in input order, work run beside the caller, and workers that die with
their parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from strokeseg.parallel import beside, map_ordered

ROOT = Path(__file__).resolve().parents[1]


def _square(x: int) -> int:
    return x * x


def _pid_and_fail(fail: bool) -> int:
    if fail:
        raise ValueError("failed beside")
    return os.getpid()


def test_map_ordered_keeps_the_input_order_inline_and_over_processes():
    assert list(map_ordered(_square, [3, 1, 2], 1, "inline", progress=False)) == [9, 1, 4]
    assert list(map_ordered(_square, list(range(7)), 2, "pool", progress=False)) == [x * x for x in range(7)]


def test_beside_runs_in_another_process_only_when_more_than_one_worker_is_asked_for():
    with beside(_pid_and_fail, False, workers=1) as result:
        assert result() == os.getpid()
    with beside(_pid_and_fail, False, workers=2) as result:
        assert result() != os.getpid()


def test_an_error_beside_reaches_the_caller():
    with pytest.raises(ValueError, match="failed beside"):
        with beside(_pid_and_fail, True, workers=2) as result:
            result()


# A stage (the parent) starts a worker the way stage 08's parallel runs do (spawn) whose set-up asks to die with it.
STAGE = """
import multiprocessing, os, sys, time
from strokeseg.parallel import die_with

def worker(parent):
    die_with(parent)
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(),)).start()
    time.sleep(120)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone and not a zombie (a dead child that nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_stage_takes_its_workers_with_it(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    stage = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        worker = int(stage.stdout.readline())
        assert running(worker)                         # alive while the stage is
        stage.send_signal(signal.SIGKILL)
        stage.wait()
        deadline = time.monotonic() + 10
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running(worker):
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its stage")
    finally:
        stage.kill()

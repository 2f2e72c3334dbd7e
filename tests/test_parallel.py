"""strokeseg.parallel: results in input order, and work run beside the caller."""
from __future__ import annotations

import os

import pytest

from strokeseg.parallel import beside, map_ordered


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

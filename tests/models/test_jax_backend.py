"""The models, losses and training metrics on Keras' JAX backend (the GPU machine this project is lent
has JAX and no TensorFlow): each model builds, takes two training steps with a finite loss, and with
the TensorFlow build's weights gives the same probabilities within :data:`TOLERANCE`; every loss and
metric gives TensorFlow's value. Both backends run in subprocesses (tests/models/backend_worker.py),
TensorFlow first (it writes the weights), then JAX (``JAX_PLATFORMS=cpu``).

Every registry model takes about 7 minutes on a 2-core CPU (JAX compiles each training step), so the
suite checks :data:`DEFAULT_MODELS` (the study's model) and ``STROKESEG_TEST_ALL_MODELS=1`` checks
them all, as the model-table test does (the 3-D attention U-Net alone added about 30 s to the
suite on a 2-core CPU, most of it JAX compiling, which the suite's time budget does not have)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strokeseg.models import model_names

from helpers import quick_xla_flags

pytest.importorskip("jax")

WORKER = Path(__file__).with_name("backend_worker.py")
ROOT = Path(__file__).resolve().parents[2]
# float32 on CPU on both sides, different kernels and summation orders: probabilities in [0, 1] agree
# to about 1e-6 here; the bound leaves room for deeper models and other CPUs.
TOLERANCE = 1e-4
DEFAULT_MODELS = ["raxnet"]
CHECKED = model_names() if os.environ.get("STROKESEG_TEST_ALL_MODELS") else DEFAULT_MODELS


def _run(folder: Path, backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": quick_xla_flags()}
    result = subprocess.run([sys.executable, str(WORKER), str(folder), *CHECKED], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / f"results_{backend}.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict, dict]:
    folder = tmp_path_factory.mktemp("backends")
    return folder, _run(folder, "tensorflow"), _run(folder, "jax")


def test_the_worker_covers_every_registry_model():
    from backend_worker import SMALL

    assert set(SMALL) == set(model_names()) and set(DEFAULT_MODELS) <= set(SMALL)


@pytest.mark.parametrize("name", CHECKED)
def test_each_model_trains_on_jax_and_matches_tensorflow(results, name):
    folder, tensorflow, jax = results
    assert jax["backend"] == "jax" and tensorflow["backend"] == "tensorflow"
    for run in (tensorflow, jax):
        outcome = run["models"][name]
        assert "error" not in outcome, f"{run['backend']}: {outcome.get('traceback', outcome.get('error'))}"
    assert len(jax["models"][name]["train_losses"]) == 2 and np.isfinite(jax["models"][name]["train_losses"]).all()
    expected, got = (np.load(folder / f"{name}_{backend}.npy") for backend in ("tensorflow", "jax"))
    assert got.shape == expected.shape and got.dtype == np.float32
    assert float(np.max(np.abs(got - expected))) <= TOLERANCE


def test_losses_and_metrics_give_tensorflows_values_on_jax(results):
    _, tensorflow, jax = results
    assert jax["losses"].keys() == tensorflow["losses"].keys()
    for name, value in tensorflow["losses"].items():
        assert jax["losses"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for name, value in tensorflow["metrics"].items():
        assert jax["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name

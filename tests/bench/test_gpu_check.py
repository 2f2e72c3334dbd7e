"""bench/gpu_check.sh, the check prepared for the lent GPU machine (JAX, no TensorFlow, no network):
its argument checks, its refusal of any backend but JAX and of a process with TensorFlow in it, and
its CPU fallback end to end (``--quick --cpu``) with ``import tensorflow`` failing, as it would there.

The end-to-end run compiles two RAX-Net training steps (float32, mixed) and predicts two MNI volumes
(warm-up, timed) on the CPU, most of it XLA compiling the training steps; with XLA's backend
optimisation off (helpers.quick_xla_flags: its figures are not looked at) 72 to 94 s on 2 busy cores."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import quick_xla_flags

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
FAKE_TENSORFLOW = 'raise ImportError("tensorflow is not installed on the GPU machine")\n'


def _run(*args: str, env: dict | None = None, timeout: float = 60, script: Path = SCRIPT):
    command = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    # No wheels folder: this machine's Python has Keras, and a test's shadowed package must stay missing.
    env = {**os.environ, "PYTHON": sys.executable, "STROKESEG_WHEELS": str(ROOT / "bench" / "no-wheels"),
           **(env or {})}
    return subprocess.run([*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _fake_tensorflow(folder: Path, body: str) -> Path:
    (folder / "tensorflow").mkdir(parents=True)
    (folder / "tensorflow" / "__init__.py").write_text(body)
    return folder


@pytest.mark.parametrize("args, option", [
    (["--steps", "0"], "--steps"), (["--batch", "-1"], "--batch"), (["--warmup", "0"], "--warmup"),
    (["--volumes", "0"], "--volumes"), (["--width", "2"], "--width"), (["--width", "0"], "--width"),
    (["--quick", "--batch", "0"], "--batch"),
])
def test_bad_arguments_exit_2_with_one_line_naming_the_option(args, option):
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


def test_the_python_script_refuses_another_backend_and_the_shell_script_forces_jax():
    direct = _run("--steps", "1", env={"KERAS_BACKEND": "tensorflow"}, script=SCRIPT.with_suffix(".py"))
    assert direct.returncode == 2 and "Traceback" not in direct.stderr
    assert direct.stderr.strip().splitlines() == [direct.stderr.strip()] and "KERAS_BACKEND" in direct.stderr
    # Through the .sh the user's KERAS_BACKEND is overridden (the backend is checked before the ranges),
    # so only the range error remains.
    wrapped = _run("--steps", "0", env={"KERAS_BACKEND": "tensorflow"})
    assert wrapped.returncode == 2 and "--steps" in wrapped.stderr and "KERAS_BACKEND" not in wrapped.stderr


def test_a_process_with_tensorflow_already_in_it_fails(tmp_path):
    """The check must prove that it runs without TensorFlow: a sitecustomize that imports a (fake,
    importable) tensorflow before the script starts makes it fail with one line, not a traceback."""
    _fake_tensorflow(tmp_path, "")
    (tmp_path / "sitecustomize.py").write_text("import tensorflow  # noqa: F401\n")
    # A short timeout: were the sitecustomize not seen (PYTHONPATH overwritten), the whole run would start.
    result = _run("--quick", "--cpu", env={"PYTHONPATH": str(tmp_path)}, timeout=30)
    assert result.returncode == 1 and result.stdout == "", result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorflow" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("package, importer", [("keras", "bench/gpu_check.py"),
                                               ("nibabel", "strokeseg/data/resample.py")])
def test_a_missing_package_is_named_in_one_line(tmp_path, package, importer):
    """The GPU machine may lack a package the check needs: one line names it and who imported it."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(f'raise ImportError("{package} is not installed here")\n')
    result = _run("--quick", "--cpu", env={"PYTHONPATH": str(tmp_path)}, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{package} is not installed here" in lines[0] and importer in lines[0], lines
    assert "Traceback" not in result.stderr


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{text}"
    value = float(match.group(1))
    assert math.isfinite(value) and value > 0, match.group(0)
    return value


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_quick_cpu_run_without_tensorflow_prints_every_figure(tmp_path):
    # A user's KERAS_BACKEND=tensorflow is overridden by the .sh; `import tensorflow` fails as on the GPU machine.
    env = {"PYTHONPATH": str(_fake_tensorflow(tmp_path, FAKE_TENSORFLOW)), "KERAS_BACKEND": "tensorflow",
           "XLA_FLAGS": quick_xla_flags()}
    result = _run("--quick", "--cpu", env=env, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^keras \S+, backend jax, jax \S+, devices .*CPU fallback: yes$", out, re.MULTILINE), out
    assert "no GPU visible to JAX: running on CPU; figures are not GPU figures" in out.splitlines()
    assert "settings: width 0.125, batch 2, warm-up 1, steps 1, volumes 1" in out
    float32 = _figure(r"^train float32: ([0-9.]+) slices/s", out)
    mixed = _figure(r"^train mixed_float16: ([0-9.]+) slices/s", out)
    assert _figure(r"^train mixed/float32: ([0-9.]+)$", out) == pytest.approx(mixed / float32, rel=0.02, abs=0.01)
    assert "optimizer LossScaleOptimizer" in out          # mixed precision really was on
    _figure(r"^inference: ([0-9.]+) s per volume", out)
    assert "Traceback" not in result.stderr

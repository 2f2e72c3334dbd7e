"""The GPU requirements are the CPU ones with TensorFlow's CUDA build of the same version, nothing else:
the two sets cannot drift apart."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pins(name: str) -> set[str]:
    lines = (ROOT / name).read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def test_gpu_requirements_differ_only_in_the_tensorflow_line():
    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    (cpu_only,), (gpu_only,) = cpu - gpu, gpu - cpu
    version = re.fullmatch(r"tensorflow-cpu==(\S+)", cpu_only).group(1)
    assert gpu_only == f"tensorflow[and-cuda]=={version}"


def test_make_venv_gpu_installs_the_gpu_requirements():
    makefile = (ROOT / "Makefile").read_text()
    assert "REQUIREMENTS := $(if $(GPU),requirements-gpu.txt,requirements.txt)" in makefile
    assert "pip install --quiet -r $(REQUIREMENTS)" in makefile

# Two entry points: `make demo` and `make test`. Both bootstrap .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= .
# GPU=1: TensorFlow's CUDA build (requirements-gpu.txt) instead of the CPU one, into a fresh .venv.
GPU ?=
REQUIREMENTS := $(if $(GPU),requirements-gpu.txt,requirements.txt)

.PHONY: demo test venv models-table clean-outputs gpu-wheels

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole study on the synthetic cohort with the demo profile: stages 01 -> 10 (each its run.py),
# then `strokeseg predict` on the held-out volumes; prints per-stage wall times and the fused Dice.
demo: $(STAMP)
	$(PY) -m strokeseg.demo --workdir $(WORKDIR)

# The full model table: every model on every plane, measured (about 12 minutes on 2 CPU cores, plus
# 10-20 minutes and up to 17 GB of memory for each of the two full-width 3-D models).
models-table: $(STAMP)
	$(PY) 07_models/run.py --workdir $(WORKDIR)

# Lint first (ruff, rules in pyproject.toml), then the suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# Wheels that bench/gpu_check.sh installs offline on a GPU machine with JAX but without Keras or nibabel
# (Python 3.12, x86-64 Linux; the versions pinned in requirements.txt). Run where PyPI is reachable.
GPU_PYTHON ?= 3.12
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --dest bench/wheels \
		$$(grep -E '^(keras|namex|optree|nibabel)==' requirements.txt)

clean-outputs:
	git clean -fdX -- 0[1-9]_* 10_* demo_predict demo_results.md demo_timings.csv

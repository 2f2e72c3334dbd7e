# Two entry points: `make demo` and `make test`. Both bootstrap .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= .

.PHONY: demo test venv models-table clean-outputs

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The stages that exist so far, in order, on the synthetic cohort with the demo profile.
demo: $(STAMP)
	$(PY) 01_dataset/run.py --profile demo --workdir $(WORKDIR)
	$(PY) 02_splitting/run.py --workdir $(WORKDIR)
	$(PY) 03_convert/run.py --workdir $(WORKDIR)
	$(PY) 04_cross_validation/run.py --workdir $(WORKDIR)
	$(PY) 05_batch_distribution/run.py --workdir $(WORKDIR)
	$(PY) 06_preparation/run.py --workdir $(WORKDIR)
	$(PY) 07_models/run.py --workdir $(WORKDIR) --quick --models raxnet
	$(PY) 08_training/run.py --workdir $(WORKDIR)
	$(PY) 09_comparison/run.py --workdir $(WORKDIR)
	$(PY) 10_fusion/run.py --workdir $(WORKDIR)

# The full model table: every model on every plane, measured (about 12 minutes on 2 CPU cores).
models-table: $(STAMP)
	$(PY) 07_models/run.py --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

clean-outputs:
	git clean -fdX -- 0[1-9]_* 10_*

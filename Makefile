# `make test` and `make demo` each set themselves up on a fresh machine:
# a virtual environment with the pinned packages, and the landmarker bundle.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LANDMARKER := pretrained/face_landmarker.task

.PHONY: setup test demo ablation bench clean-demo

setup: $(INSTALLED) $(LANDMARKER)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(LANDMARKER): $(INSTALLED)
	$(PY) fetch_landmarker.py --destination $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) run_demo.py

ablation: setup
	$(PY) ablation.py

bench: setup
	$(PY) benchmarks/bench_extraction.py

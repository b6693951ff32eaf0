# `make test` and `make demo` each set themselves up on a fresh machine:
# a virtual environment with the pinned packages, and the landmarker bundle.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LANDMARKER := pretrained/face_landmarker.task

.PHONY: setup test demo bench clean-demo

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

# Extraction throughput on the sample photos; e.g. `make bench BENCH_ARGS="--repeat 4 --workers 1"`.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmark_extraction.py $(BENCH_ARGS)

clean-demo:
	rm -rf demo_output

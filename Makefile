# `make test` and `make demo` each set themselves up on a fresh machine: a virtual
# environment with the pinned packages, the landmarker bundle and InsightFace's
# w600k_mbf.onnx recogniser (the demo's global branch where AdaFace is absent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LANDMARKER := pretrained/face_landmarker.task
RECOGNISER := pretrained/w600k_mbf.onnx

.PHONY: setup test demo ablation bench clean-demo

setup: $(INSTALLED) $(LANDMARKER) $(RECOGNISER)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(LANDMARKER): $(INSTALLED)
	$(PY) fetch_models.py landmarker --destination $@

# Not fatal: without it the tests that need it skip (saying why), and the demo asks for
# AdaFace or --global-model none. make retries the fetch on the next run.
$(RECOGNISER): $(INSTALLED)
	@$(PY) fetch_models.py recogniser --destination $@ || \
		echo "WARNING: $@ could not be fetched (see above). Tests that need it will be skipped;" \
		"make demo needs it (or AdaFace in pretrained/, or: $(PY) run_demo.py --global-model none)." >&2

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) run_demo.py

ablation: setup
	$(PY) ablation.py

# Extraction throughput on the sample photos; e.g. `make bench BENCH_ARGS="--repeat 4 --workers 1"`.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmark_extraction.py $(BENCH_ARGS)

clean-demo:
	rm -rf demo_output

# udaqa-pipeline: every target sets up what it needs (venv, CPU torch, the package, the weights).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/udaqa-pipeline
STAMP := $(VENV)/.installed
WEIGHTS_STAMP := cache/weights/i3d_kinetics400_rgb.pt

# The stage the targets below work on (`udaqa-pipeline evaluate` itself, with no stage, takes the
# stage of the most recent run).
DATASET ?= mtl
ROOT ?=
BACKEND ?= hdf5
FOLD ?= 0
ARGS ?=

.PHONY: venv weights test test-slow demo features train evaluate ablate bench bench-real bench-calibration clean-venv

venv: $(STAMP)

# The CPU wheel is pinned here, not in pyproject, so a bare `torch` never pulls a CUDA build in CI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

weights: $(STAMP)
	$(CLI) weights fetch

test: $(STAMP) weights
	$(PY) -m pytest -q

test-slow: $(STAMP) weights
	$(PY) -m pytest -q -m slow

demo: $(STAMP) weights
	$(PY) -m udaqa_pipeline.experiments.demo $(ARGS)

features: $(STAMP) weights
	$(CLI) features $(DATASET) $(if $(ROOT),--root $(ROOT)) --backend $(BACKEND) $(ARGS)

train: $(STAMP)
	$(CLI) train $(DATASET) --fold $(FOLD) $(ARGS)

evaluate: $(STAMP)
	$(CLI) evaluate $(DATASET) --fold $(FOLD) $(ARGS)

ablate: $(STAMP)
	$(CLI) ablate $(DATASET) --fold $(FOLD) $(ARGS)

bench: $(STAMP) weights
	$(PY) -m bench.run $(ARGS)

# Real JIGSAWS Suturing (../shared/data or $$UDAQA_REAL_DATA): official 4-fold (both protocols) and
# leave-one-surgeon-out, 5 seeds -> bench/real.json; ARGS=--dev compares recipes on the dev split.
bench-real: $(STAMP) weights
	$(PY) -m bench.real $(ARGS)

# The judge-panel calibration table on the demo (its set and cache, made when missing), 5
# training seeds, honest protocol -> bench/calibration.json; about 10 minutes on 2 cores.
bench-calibration: $(STAMP) weights
	$(PY) -m bench.calibration $(ARGS)

clean-venv:
	rm -rf $(VENV)

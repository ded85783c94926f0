# classguard: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := true
PORT ?= 3000
EXTRA ?= artifacts/harvest

.PHONY: help venv train retrain serve demo demo-fleet test manifests deploy-check deploy-dry-run build-cuda bench-footprint bench-regions bench-gpu bench bench-all bench-detection bench-streaming bench-monitors bench-guardrails bench-estimate bench-log soak bench-batch bench-resnet bench-hostile bench-fleet bench-capture build clean docs

help:
	@echo "make demo   - set up, train, serve, replay the incident, print the table"
	@echo "make demo-fleet - the same incident on three replicas sharing a throwaway PostgreSQL"
	@echo "make test   - the whole test suite"
	@echo "make docs   - serve the docs site on http://127.0.0.1:8000 (mkdocs; pages under docs/)"
	@echo "make serve  - serve on http://127.0.0.1:$(PORT)"
	@echo "make train  - train both models into $(BENTOML_HOME) (skips existing)"
	@echo "make retrain EXTRA=DIR - train classguard-harvested on the retrained model's data plus an export (classguard dataset export -o DIR)"
	@echo "make bench  - throughput benchmark (classguard vs a minimal BentoML endpoint)"
	@echo "make build  - bentoml build (a Bento with both models)"
	@echo "make build-cuda - the same Bento for GPU nodes (bentofile.cuda.yaml)"
	@echo "make manifests - render deploy/kubernetes/ from dashboards/ and config/; make deploy-check validates it"
	@echo "make deploy-dry-run - a rolling update from the rendered Deployment, played on this machine"
	@echo "make bench-streaming - the monitors against river and Alibi Detect at one false-alarm rate (builds .venv-alibi)"
	@echo "make bench-detection / bench-monitors / bench-guardrails / bench-estimate / bench-log / bench-batch / bench-resnet / bench-hostile / bench-fleet / bench-footprint / bench-regions / bench-capture / soak"
	@echo "make bench-all - every benchmark above, one after the other (JSON under artifacts/)"
	@echo "make bench-gpu - the GPU benchmark (an NVIDIA GPU and CUDA torch; not part of bench-all)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0   # the CPU wheel first, so nothing pulls a CUDA build
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

train: venv
	$(BIN)/python -m training.train

retrain: venv
	$(BIN)/python -m training.train --models harvested --force --extra $(EXTRA)

serve: train
	$(BIN)/bentoml serve --host 127.0.0.1 --port $(PORT)

demo: train
	$(BIN)/python -m harness.demo

# needs Debian's postgresql (and prometheus, to show the alerts): apt-get install postgresql prometheus
demo-fleet: train
	$(BIN)/python -m harness.demo_fleet

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the docs site (mkdocs.yml, docs/); the configuration and HTTP references are generated at build time
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

bench: train
	$(BIN)/python -m benchmarks.throughput

# a ResNet-50 layout in float16 on CUDA: raw forward vs /classify_batch and /classify (no trained models needed)
bench-gpu: venv
	$(BIN)/python -m benchmarks.gpu

# every benchmark in turn; one that fails (say, no wrk) does not stop the others
bench-all: train
	$(MAKE) --keep-going bench bench-batch bench-resnet bench-monitors bench-log bench-guardrails bench-estimate \
		bench-detection bench-streaming bench-hostile bench-fleet bench-footprint bench-regions bench-capture soak

# BentoML refuses a bentofile under a dot-folder (a clone in ~/.cache/...): there, build from a copy
# of the checkout in a plain temporary folder (harness/build_check.py); elsewhere, build in place.
build: train
ifeq ($(findstring /.,$(CURDIR)),)
	$(BIN)/bentoml build
else
	$(BIN)/python -m harness.build_check
endif

build-cuda: train
ifeq ($(findstring /.,$(CURDIR)),)
	$(BIN)/bentoml build -f bentofile.cuda.yaml
else
	$(BIN)/python -m harness.build_check -f bentofile.cuda.yaml
endif

manifests: venv
	$(BIN)/python dashboards/build_dashboards.py
	$(BIN)/python -m deploy.render

deploy-check: venv
	$(BIN)/python -m deploy.validate

# needs Debian's postgresql and prometheus
deploy-dry-run: train
	$(BIN)/python -m harness.rollout

clean:
	rm -rf $(VENV) .venv-alibi .bentoml artifacts .pytest_cache

bench-detection: train
	$(BIN)/python -m benchmarks.detection

# river goes into the service's environment (numpy 2 is fine for it); Alibi Detect pins numpy < 2,
# so it gets an environment of its own that the service never uses
ALIBI := .venv-alibi
$(ALIBI)/.installed:
	$(PYTHON) -m venv $(ALIBI)
	$(ALIBI)/bin/pip install --quiet --upgrade pip
	$(ALIBI)/bin/pip install --quiet alibi-detect==0.13.0
	$(ALIBI)/bin/pip install --quiet torch==2.13.0   # MMDDriftOnline's backend; pinned: the CPU wheel, not a CUDA build
	touch $@

bench-streaming: train $(ALIBI)/.installed
	$(BIN)/pip install --quiet river==0.26.1
	$(BIN)/python -m benchmarks.streaming --alibi-python $(ALIBI)/bin/python

bench-monitors: train
	$(BIN)/python -m benchmarks.monitor_cost

bench-guardrails: train
	$(BIN)/python -m benchmarks.guardrail_latency

bench-estimate: train
	$(BIN)/python -m benchmarks.estimate_accuracy

bench-log: venv
	$(BIN)/python -m benchmarks.log_throughput

soak: train
	$(BIN)/python -m benchmarks.soak --requests 100000

bench-batch: train
	$(BIN)/python -m benchmarks.batch_path
	$(BIN)/python -m benchmarks.answer_path

bench-resnet: venv
	$(BIN)/python -m benchmarks.realistic_model

bench-hostile: train
	$(BIN)/python -m benchmarks.hostile
	$(BIN)/python -m benchmarks.image_memory

bench-fleet: train
	$(BIN)/python -m benchmarks.fleet
	$(BIN)/python -m benchmarks.fleet_store

bench-footprint: train
	$(BIN)/python -m benchmarks.footprint

bench-regions: train
	$(BIN)/python -m benchmarks.regions
	$(BIN)/python -m benchmarks.region_cost

bench-capture: venv
	$(BIN)/python -m benchmarks.capture_retention
	$(BIN)/python -m benchmarks.capture_cost

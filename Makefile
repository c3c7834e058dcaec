# sqdr: common tasks. Everything runs inside .venv/ at the repository root (created by `make install`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKERS ?= 1
STUDY ?= sweeps/params_vs_accuracy_digits.yaml
ARGS ?=

.PHONY: help install test test-slow train noise sweep bench wandb-sync clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/sqdr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/sqdr fit --help > /dev/null  # renders the help text once, so `sqdr fit --help` answers at once
	touch $@

install: $(BIN)/sqdr ## create .venv/ and install sqdr with its test tools

test: install ## the default test suite (no network; about 7 CPU-minutes, 15 minutes on 2 busy cores)
	$(BIN)/pytest -q

test-slow: install ## the slow tests: every engine against PennyLane at the paper size (9 qubits)
	$(BIN)/pytest -q -m slow

train: install ## train the quickstart model on the embedded digits data set, then test it
	$(BIN)/sqdr fit --config conf/experiments/quickstart.yaml $(ARGS)

noise: install ## accuracy of the newest quickstart run under hardware noise (CSV + plot; trains first if needed)
	@test -d runs/quickstart || $(MAKE) train
	$(BIN)/sqdr noise --ckpt runs/quickstart --preset paper $(ARGS)

sweep: install ## Optuna study (STUDY=..., WORKERS=N), then its report in runs/<study>/report/
	$(BIN)/sqdr sweep $(STUDY) --workers $(WORKERS) $(ARGS)
	$(BIN)/sqdr report $(STUDY)

bench: install ## engine throughput, side by side in one run
	$(BIN)/sqdr bench $(ARGS)

wandb-sync: install ## upload offline W&B runs (needs `wandb login` and network)
	$(BIN)/wandb sync $$(find runs -type d -name 'offline-run-*')

clean: ## remove the virtual environment and caches (runs/ and results/ are kept)
	rm -rf $(VENV) *.egg-info .pytest_cache

# Container image: `docker build` where a Docker engine answers; elsewhere (no engine, no registry access)
# buildah through scripts/build-image.sh, which explains the differences.
SMOKE_DIR ?= /tmp/sqdr-smoke
.PHONY: image image-smoke

image: ## build the container image `sqdr` (Docker, or buildah via scripts/build-image.sh without an engine)
	@if docker info >/dev/null 2>&1; then docker build -t sqdr .; else scripts/build-image.sh build; fi

image-smoke: ## inside the image: `sqdr --help` and a one-epoch quickstart fit; runs/ and results/ in SMOKE_DIR
	@if docker info >/dev/null 2>&1; then \
	    mkdir -p $(SMOKE_DIR)/runs $(SMOKE_DIR)/results && \
	    docker run --rm -v $(SMOKE_DIR)/runs:/app/runs -v $(SMOKE_DIR)/results:/app/results sqdr sh -c \
	        'sqdr --help && sqdr fit --config conf/experiments/quickstart.yaml --trainer.max_epochs 1'; \
	else scripts/build-image.sh smoke $(SMOKE_DIR); fi

# The paper's evaluation: baselines, ablations and seeds from conf/reproduce/experiments.yaml; resumable.
BUDGET ?= quick
WORKERS ?= 1
.PHONY: reproduce

reproduce: install ## the paper's evaluation with baselines and ablations (BUDGET=quick|fashion_mnist|paper, WORKERS=n); tables and figures in results/reproduce/
	$(BIN)/sqdr reproduce --budget $(BUDGET) --workers $(WORKERS) $(ARGS)

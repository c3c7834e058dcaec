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
	touch $@

install: $(BIN)/sqdr ## create .venv/ and install sqdr with its test tools

test: install ## the default test suite (no network; under 15 minutes on 2 cores)
	$(BIN)/pytest -q

test-slow: install ## the slow tests: every engine against PennyLane at the paper size (9 qubits)
	$(BIN)/pytest -q -m slow

train: install ## train the quickstart model on the embedded digits data set, then test it
	$(BIN)/sqdr fit --config conf/experiments/quickstart.yaml $(ARGS)

noise: install ## accuracy of the newest quickstart run under hardware noise (CSV + plot; trains first if needed)
	@test -d runs/quickstart || $(MAKE) train
	$(BIN)/sqdr noise --ckpt runs/quickstart --preset paper $(ARGS)

sweep: install ## Optuna study (STUDY=..., WORKERS=N), then its Pareto table and plot
	$(BIN)/sqdr sweep $(STUDY) --workers $(WORKERS) $(ARGS)
	$(BIN)/sqdr sweep $(STUDY) --summary

bench: install ## engine throughput, side by side in one run
	$(BIN)/sqdr bench $(ARGS)

wandb-sync: install ## upload offline W&B runs (needs `wandb login` and network)
	$(BIN)/wandb sync $$(find runs -type d -name 'offline-run-*')

clean: ## remove the virtual environment and caches (runs/ and results/ are kept)
	rm -rf $(VENV) *.egg-info .pytest_cache

# sqdr: common tasks. Everything runs inside .venv/ at the repository root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKERS ?= 1
STUDY ?= sweeps/params_vs_accuracy_digits.yaml
ARGS ?=

.PHONY: install test test-slow train sweep noise report bench wandb-sync clean

$(BIN)/sqdr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/sqdr ## create .venv/ and install sqdr into it

test: install ## the default test suite (a few minutes on 2 cores)
	$(BIN)/pytest -q

test-slow: install ## the slow tests (full-size engine comparisons, multi-process sweeps)
	$(BIN)/pytest -q -m slow

train: install ## train the quickstart experiment on the embedded digits data set
	$(BIN)/sqdr fit --config conf/experiments/quickstart.yaml $(ARGS)

bench: install ## engine throughput, side by side in one run
	$(BIN)/sqdr bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

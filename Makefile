# Set-up and the main commands. `make fit` and `make test` create a virtual
# environment in .venv on first use, with the CPU build of torch.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/base.yaml

.PHONY: fit test tensorboard clean

$(BIN)/activate-stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

fit: $(BIN)/activate-stamp
	$(BIN)/python -m lightning_grok fit --config $(CONFIG)

test: $(BIN)/activate-stamp
	$(BIN)/python -m pytest -q

tensorboard: $(BIN)/activate-stamp
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1

clean:
	rm -rf $(VENV) runs

# Common loops. `make install` creates .venv with the versions verified together (constraints.txt).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export WANDB_MODE ?= offline

.PHONY: help install test test-full lint format quickstart clean-logs

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv and install the package with its dev tools
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -c constraints.txt -e '.[dev]'

test:  ## the default test suite (what CI runs); Triton kernels run in interpreter mode on CPU
	TRITON_INTERPRET=1 $(PYTHON) -m pytest

test-full:  ## every test, slow ones included
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -m ""

lint:  ## ruff (lint and format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:  ## ruff autofix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

quickstart:  ## train the quickstart model on synthetic faces
	$(VENV)/bin/fer-lightning fit --config experiments/quickstart.yaml

clean-logs:  ## remove run folders
	rm -rf runs lightning_logs wandb

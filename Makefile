# Everything runs from a virtual environment that `make` creates and fills on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 installs quickly here; pass TORCH=torch (or a CUDA build) elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test demo

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[training,test,benchmarks]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/python benchmarks/sampler_oracle.py

# Everything runs from a virtual environment that `make` creates and fills on first use.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 installs quickly here; pass TORCH=torch (or a CUDA build) elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install peers test train
OUTPUT ?= outputs/digits

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[training,test,benchmarks]"
	touch $@

install: $(VENV)/.installed

# Meta's `flow-matching` (CC BY-NC 4.0; it also installs a top-level `tests` package) is a peer in
# benchmarks/peers_digits.py only, so it is never part of `install`: run `make peers` before that benchmark.
peers: install
	$(BIN)/python -m pip install --quiet -e ".[peers]"

test: install
	$(BIN)/python -m pytest tests

# The main job: train a class-conditional model on the bundled digits (CPU, minutes), then sample from the saved
# pipeline again. Rerunning resumes from the last checkpoint instead of starting over.
train: install
	$(BIN)/python train_scripts/train_binary_flow.py --output_dir $(OUTPUT) --class_conditional \
		--max_train_steps 800 --resume_from_checkpoint latest
	$(BIN)/python train_scripts/sample_binary_flow.py --pipeline $(OUTPUT) --output_dir $(OUTPUT)/sampled_again

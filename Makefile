# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make run    set up .venv, create var/inbox, start the daemon on config/srwatch.yaml
#   make test   set up .venv with the test extras, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run once test venv test-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime: srwatch and the OpenVINO engine.
$(VENV)/.runtime: pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[openvino,onnxruntime]'
	touch $@

# Tests also train a tiny model: torch 2.13.0 is the CPU build (a plain `torch` would pull CUDA).
$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[openvino,onnxruntime,train,test]'
	touch $@

venv: $(VENV)/.runtime
test-venv: $(VENV)/.test

run: $(VENV)/.runtime
	mkdir -p var/inbox
	$(BIN)/srwatch run -c config/srwatch.yaml

once: $(VENV)/.runtime
	mkdir -p var/inbox
	$(BIN)/srwatch once -c config/srwatch.yaml

test: $(VENV)/.test
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) var

# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make run    set up .venv, create var/inbox, start the daemon on config/srwatch.yaml
#   make test   set up .venv with the test extras, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run once test venv test-venv system-test-deps soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime: srwatch and the OpenVINO engine.
$(VENV)/.runtime: pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e '.[openvino,onnxruntime]'
	touch $@

# Tests also train a tiny model: torch 2.13.0 is the CPU build (a plain `torch` would pull CUDA);
# tests/test_ray.py runs a two-node Ray cluster (the ray extra).
$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[openvino,onnxruntime,train,test,ray]'
	touch $@

# Benchmarks (benchmarks/soak.py draws its curves with matplotlib).
$(VENV)/.bench: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install --quiet -e '.[openvino,onnxruntime,bench]'
	touch $@

venv: $(VENV)/.runtime
test-venv: $(VENV)/.test

# tests/test_systemd_unit.py runs systemd-analyze (package systemd) on the unit, whose ExecReload
# needs /bin/kill (package procps); the fault suite's no-hard-link outbox is a FAT image made by
# mkfs.vfat (dosfstools) and mounted with fusefat where the kernel has no vfat driver (fusefat
# also brings libfuse2, which tests/slowfs.py's slow disk runs on through fusepy). A fresh
# Debian/Ubuntu machine (CI) may lack them: install what is missing with apt-get (as root, or
# through sudo). Where that cannot be done those tests skip (the unit test fails under CI=true).
# tests/test_web_browser.py drives a headless Chromium through Selenium: Debian's chromium and
# chromium-driver (/usr/bin/chromedriver), so Selenium downloads nothing; it too fails under CI=true.
system-test-deps:
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	[ -x /bin/kill ] || missing="$$missing procps"; \
	command -v mkfs.vfat >/dev/null 2>&1 || missing="$$missing dosfstools"; \
	command -v fusefat >/dev/null 2>&1 || missing="$$missing fusefat"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo -n"; \
	  echo "installing$$missing for the unit, fault and browser tests (apt-get)"; \
	  if command -v apt-get >/dev/null 2>&1 && $$sudo apt-get update -qq && \
	     $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  then :; else echo "warning: could not install$$missing; the tests that need them will skip"; fi; \
	fi

run: $(VENV)/.runtime
	mkdir -p var/inbox
	$(BIN)/srwatch run -c config/srwatch.yaml

once: $(VENV)/.runtime
	mkdir -p var/inbox
	$(BIN)/srwatch once -c config/srwatch.yaml

test: $(VENV)/.test system-test-deps
	$(BIN)/python -m pytest -q -rs

# The 30-minute soak (benchmarks/README.md, "Soak"); e.g. make soak SOAK_ARGS="--minutes 5".
soak: $(VENV)/.bench
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var

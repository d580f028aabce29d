# pilegate: the two commands are `make setup` and `make test`; `make help` lists the rest.
SHELL := /bin/sh
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast test-py test-mpy fuzz lint firmware bench demo lock clean hil
# pytest workers: the suite mostly waits on real parts (brokers, buses, processes), so more
# workers than cores pays; override with `make test PYTEST_WORKERS=0` to run serially.
PYTEST_WORKERS ?= 4

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install everything: system packages (apt-get), .venv with pinned deps, MicroPython runtime (npm)
	@scripts/setup.sh

test: ## run every test: pytest on CPython (in parallel), then the core tests on MicroPython
	@$(PY) -m pytest -n $(PYTEST_WORKERS)
	@scripts/test-mpy.sh

test-fast: ## the quick loop: every test that starts no broker, bus or process (CPython only)
	@$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

test-py: ## run the pytest suite only
	@$(PY) -m pytest -n $(PYTEST_WORKERS)

fuzz: ## the fuzz targets (tests/fuzz) with many random inputs; make test runs them bounded and repeatable
	@PILEGATE_FUZZ=fuzz $(PY) -m pytest -n $(PYTEST_WORKERS) tests/fuzz -q

test-mpy: ## run the portable-core tests on MicroPython (official WebAssembly build under Node)
	@scripts/test-mpy.sh

lint: ## ruff (checks and the one formatter, --check) and mypy (strict on gateway/, tools/, hil/)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

firmware: ## compile firmware/ with mpy-cross into build/firmware/, with module sizes
	@$(PY) -m piletools.firmware_build

bench: ## benchmarks, each printed as a ratio against a baseline measured in the same run
	@$(VENV)/bin/pilegate bench all

HIL_DUTS ?= pi mpy
hil: ## every HIL scenario on the simulated DUTs (HIL_DUTS="pi mpy"); report in build/hil/index.html
	@rm -rf build/hil && mkdir -p build/hil  # the report is this run's, not a mix with older ones
	@$(PY) -m pytest tests/hil/test_scenarios.py -p no:cacheprovider -n 2 --dist worksteal -q $(foreach d,$(HIL_DUTS),--dut=$(d)) \
	  --junitxml=build/hil/junit.xml -o junit_family=xunit2; \
	  status=$$?; echo "HIL report: build/hil/index.html"; exit $$status

demo: ## private broker + simulated 8-pile site + gateway + verifier; Ctrl-C stops all
	@$(VENV)/bin/pilegate demo

lock: ## re-resolve requirements*.in into requirements*.lock (exact pins and sha256 of every file)
	@python3 -m venv build/lock-venv && build/lock-venv/bin/pip install -q pip-tools==7.6.2
	@build/lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-header --no-emit-index-url --no-emit-find-links \
	    -o requirements.lock requirements.in
	@build/lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-header --no-emit-index-url --no-emit-find-links \
	    -o requirements-dev.lock requirements-dev.in

clean: ## remove build output and caches (keeps .venv and node_modules)
	rm -rf build .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

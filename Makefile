# The two commands of the README: `make demo` and `make test`. Every target creates the
# virtual environment (and the Node tools, when Node is installed) on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: demo test lint typecheck unit bench clean node

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# mypy cannot follow the editable install's import hook: give it the installed shape.
	mkdir -p $(VENV)/src/owlgate
	for part in codecs edge fleet hil provisioning bench; do ln -sfn ../../../$$part $(VENV)/src/owlgate/$$part; done
	touch $@

# Node runs real MicroPython (WebAssembly) and the lora-packet cross-checks. Without Node the
# tests that need it skip locally; under CI=true they fail instead.
$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: tests that need Node will skip (fail under CI=true)"; fi

node: $(NODE_STAMP)

demo: $(STAMP)
	$(BIN)/owlgate demo --duration 30 --gateways 3 --nodes 60

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	# The node-side subset is checked a second time against MicroPython's standard library.
	$(BIN)/mypy --strict --no-incremental --custom-typeshed-dir "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" codecs/errors.py codecs/node

# Two pytest workers, one per core: most tests wait on servers, agents and brokers rather than
# compute, so the suite takes about half as long. Each test file stays in one worker (its
# module fixtures start once). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
unit: $(STAMP) node
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: lint unit

bench: $(STAMP)
	$(BIN)/owlgate bench --json bench-results.json

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache .hypothesis

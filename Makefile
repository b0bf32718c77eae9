# Every target sets up what it needs on a fresh machine: a .venv with the project installed
# in editable mode (re-installed only when pyproject.toml changes) and the node interop
# clients (re-installed only when their package.json or lock changes).

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_DIR := tests/interop/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: all run run-cluster test test-repeat lint typecheck pytest bench setup services clean distclean

all: test

# smsc serve on its embedded default (ESME listener 127.0.0.1:2775, test/test, three simulated
# carriers, metrics on 127.0.0.1:9775), in the foreground; Ctrl-C stops it in order.
run: setup
	$(BIN)/smsc serve

# Two nodes of a cluster on one local Redis (port 6390, data in a temporary directory): node 1
# on 127.0.0.1:2775 (metrics and console 9775, HTTP API 8775), node 2 on 127.0.0.1:2785
# (9785, 8785), each with the
# embedded default's simulated carriers (their binds shared out between the nodes) and its
# own working directory (each in a process group of its own, so that Ctrl-C reaches make,
# which stops the nodes in order, then Redis).
CLUSTER_REDIS := redis://127.0.0.1:6390/0
run-cluster: setup services
	@dir=$$(mktemp -d -t smsc-cluster-XXXXXX); mkdir -p $$dir/node1 $$dir/node2; \
	setsid redis-server --bind 127.0.0.1 --port 6390 --dir $$dir --save '' \
	  --appendonly yes --logfile $$dir/redis.log & redis=$$!; \
	for i in $$(seq 100); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	echo "redis: $(CLUSTER_REDIS) (data and logs in $$dir)"; \
	(cd $$dir/node1 && exec setsid $(abspath $(BIN))/smsc serve --redis $(CLUSTER_REDIS) \
	  --node-id 1 --port 2775 --metrics-port 9775 --api-port 8775) & one=$$!; \
	(cd $$dir/node2 && exec setsid $(abspath $(BIN))/smsc serve --redis $(CLUSTER_REDIS) \
	  --node-id 2 --port 2785 --metrics-port 9785 --api-port 8785) & two=$$!; \
	stop() { kill $$one $$two 2>/dev/null; wait $$one $$two; kill $$redis; wait $$redis; }; \
	trap stop INT TERM; wait $$one $$two; kill $$redis 2>/dev/null; wait $$redis

test: lint typecheck pytest

lint: $(PY_STAMP)
	$(BIN)/ruff check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy

pytest: setup services
	$(BIN)/pytest

# The suite N times, each run a fresh process; lists every test that failed at least once.
# HOG=1 runs a busy process beside it (flakes are timing assumptions; they show under load).
N ?= 10
test-repeat: setup services
	$(BIN)/python tests/repeat.py --runs $(N) $(if $(HOG),--hog)

bench: $(PY_STAMP)
	$(BIN)/python bench/codec.py

setup: $(PY_STAMP) $(NODE_STAMP)

# Services the tests start themselves (on free loopback ports, in temporary directories):
# Debian packages, installed when missing (CI runs as root on a fresh machine); chromium
# is the browser of the console tests (driven by Playwright from PyPI, never downloaded by it).
DEBIAN_PACKAGES := redis-server chromium
services:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) \
	    apt-get install -y -qq --no-install-recommends $$missing; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test,dev,report]'
	touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(NODE_DIR)/node_modules

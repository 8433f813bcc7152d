PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test unit e2e lint demo bench docs docs-gen clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# lint, then the pure unit tests (seconds), then the real-process tests (minutes)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests/unit
	$(BIN)/python -m pytest -q tests/e2e

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .

# the references generated from the code (docs/gen.py), then the site into site/, strict: a broken link
# or anchor fails; tests/unit/test_docs.py fails when a committed reference differs from the code
docs-gen: $(STAMP)
	$(BIN)/python docs/gen.py

docs: docs-gen
	$(BIN)/python -m mkdocs build --strict

# on other ports: make demo LB_DEMO_PORT_BASE=18080 (lb on 18080, /metrics 18081, the backends
# 18082 and up), or a config of one's own: make demo LB_DEMO_CONFIG=FILE
demo: $(STAMP)
	$(BIN)/lb demo $(if $(LB_DEMO_CONFIG),-c $(LB_DEMO_CONFIG)) $(if $(LB_DEMO_PORT_BASE),--port-base $(LB_DEMO_PORT_BASE))

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The proof (rolling deploy, a crash and an upgrade of lb mid-deploy, under load) and the throughput
# comparison with HAProxy and nginx; bench/setup.sh installs wrk, nginx-light, haproxy.
bench: $(BENCH_STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/deploy_under_load.py --scenario rolling
	$(BIN)/python bench/deploy_under_load.py --scenario crash
	$(BIN)/python bench/deploy_under_load.py --scenario upgrade-lb
	$(BIN)/python bench/throughput.py --peers

clean:
	rm -rf $(VENV) build site *.egg-info

# Two commands do all the set-up on a fresh machine with Python 3 and make:
#   make demo   - the exporter on its embedded simulator, at http://localhost:9879/metrics
#                 (another port: make demo PORT=9900)
#   make test   - lint, types and the whole suite (fetches Prometheus from Debian packages)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := .tools/.installed
PORT   ?= 9879

.PHONY: demo test lint typecheck unit bench attack tools monitoring clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(TOOLS): scripts/fetch-tools.sh
	scripts/fetch-tools.sh .tools
	touch $@

tools: $(TOOLS)

demo: $(STAMP)
	$(BIN)/asyncjob-exporter --demo --web.listen-address=:$(PORT)

lint: $(STAMP)
	$(BIN)/ruff check exporter tests benchmarks grafana deploy alerting
	$(BIN)/ruff format --check exporter tests benchmarks grafana deploy alerting

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(TOOLS)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/pytest

test: lint typecheck unit

# BENCH_ARGS="--only prometheus" for the cost to a scraping Prometheus alone.
bench: $(STAMP) $(TOOLS)
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(BIN)/python -m benchmarks $(BENCH_ARGS)

# Issue 14's attacks against real exporter processes on loopback, one table; exit 1 if any
# did not hold. ATTACK_ARGS=--quick is the short form the test suite runs. Needs root (tmpfs).
attack: $(STAMP)
	$(BIN)/python -m benchmarks.attack $(ATTACK_ARGS)

# Regenerate what monitoring.yaml (the scrape-job selector, the links) feeds: the alert rules,
# the dashboards and the Overview's recording rules, then the Kubernetes component made from
# them. Tests fail while a generated file differs from its generator's output.
monitoring: $(STAMP)
	$(BIN)/python alerting/generate_rules.py
	$(BIN)/python grafana/generate.py
	$(BIN)/python deploy/kubernetes/generate_monitoring.py

# Everything the build and the tests leave behind.
clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist \
		*.egg-info test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

